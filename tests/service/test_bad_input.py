"""Hand-written bad input, limits and access: each answer is a 4xx whose detail says what to fix.

(The cases tests/service/test_search_api.py and test_videos_api.py already hold are not repeated.)
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.service.serving import CAPTIONS

JSON = {"content-type": "application/json"}
MULTIPART = "multipart/form-data; boundary=x"


def chunks(total: int, size: int = 1 << 20):
    """A body sent chunked (no Content-Length), so only counting the bytes read can stop it."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


@pytest.fixture
def server(serve):
    return serve(max_upload_bytes=4096)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("POST", "/search", {"content": b'{"query": "\xff\xfe a cat"}', "headers": JSON}, 400, "not valid UTF-8"),
        ("POST", "/search", {"json": {"query": "a cat", "top_k": 10**40}}, 422, "top_k must be between 1 and 100"),
        ("POST", "/search", {"json": {"query": "a cat", "top_k": -(10**40)}}, 422, "top_k must be between"),
        ("POST", "/search", {"json": {"query": "a cat", "top_k": 2.5}}, 422, "top_k: Input should be a valid integer"),
        ("POST", "/search", {"json": {"query": ["a", "cat"]}}, 422, "query: Input should be a valid string"),
        ("POST", "/search", {"json": [CAPTIONS[0]]}, 422, "request body: Input should be a valid dictionary"),
        ("POST", "/search", {"content": b'{"query": "a"', "headers": JSON}, 422, "not valid JSON"),
        (
            "POST",
            "/search",
            {"content": b"<query>a</query>", "headers": {"content-type": "application/xml"}},
            415,
            "Content-Type: application/json",
        ),
        ("POST", "/search", {"content": b'{"query": "a"}'}, 415, "got 'none'"),
        ("POST", "/search", {"data": {"query": "a"}}, 415, "application/x-www-form-urlencoded"),
        ("POST", "/search/batch", {"json": {"queries": ["a cat", " "]}}, 422, "query must contain some words"),
        ("POST", "/search/batch", {"json": {"queries": ["a"] * 65}}, 422, "the limit is 64 per request"),
        ("POST", "/search/batch", {"json": {"queries": "a cat"}}, 422, "queries: Input should be a valid list"),
        ("GET", "/videos/a/b", {}, 404, "a video id cannot hold '/'"),
        ("GET", "/videos/..%2F..%2Fetc%2Fpasswd", {}, 404, "a video id cannot hold '/'"),
        ("PUT", "/videos/..%2Fescape", {"json": {"frames": [[0.0] * 32]}}, 404, "a video id cannot hold '/'"),
        ("GET", "/videos/a%5Cb", {}, 422, "video id must be"),
        ("GET", "/videos/a%00b", {}, 422, "video id must be"),
        ("GET", "/videos/" + "a" * 129, {}, 422, "video id must be 1-128 characters"),
        ("DELETE", "/videos/.hidden", {}, 422, "not starting with '.'"),
        ("PUT", "/videos/ragged", {"json": {"frames": [[0.0] * 32, [0.0] * 7]}}, 422, "frames must be a [F, 32]"),
        ("PUT", "/videos/extra", {"json": {"frames": [[0.0] * 32], "colour": 1}}, 422, "Extra inputs"),
        ("PUT", "/videos/bad-json", {"content": b"{frames", "headers": JSON}, 422, "Invalid JSON"),
        ("PUT", "/videos/nofile", {"files": {"other": ("a.mp4", b"123")}}, 422, "needs a 'file' field"),
        (
            "PUT",
            "/videos/text",
            {"files": {"file": ("a.mp4", b"just some text, not a video")}},
            422,
            "the file is not a video we can decode (not a container we read)",
        ),
        ("PUT", "/videos/empty", {"files": {"file": ("a.mp4", b"")}}, 422, "the upload is empty"),
        (
            "PUT",
            "/videos/big",
            {"content": chunks(10_000, 1000), "headers": {"content-type": MULTIPART}},
            413,
            "the limit is 4096 bytes",
        ),
        ("POST", "/search", {"content": chunks(10 << 20), "headers": JSON}, 413, "the limit is 1048576 bytes"),
        ("POST", "/search", {"json": {"query": "x" * (10 << 20)}}, 413, "the limit is 1048576 bytes"),
        ("PATCH", "/search", {}, 405, "PATCH is not allowed on /search"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_to_fix(server, method, path, kwargs, status, message):
    r = httpx.request(method, f"{server.url}{path}", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"], r.json()


def test_limits_hold_and_the_service_goes_on(serve):
    server = serve(max_body_bytes=4096, max_query_chars=50, max_top_k=5)
    url = server.url
    r = httpx.post(f"{url}/search", json={"query": "a " * 30})
    assert r.status_code == 422 and "the limit is 50" in r.json()["detail"]
    r = httpx.post(f"{url}/search", json={"query": "a cat", "top_k": 6})
    assert r.status_code == 422 and "between 1 and 5" in r.json()["detail"]
    r = httpx.post(f"{url}/search", content=chunks(5000, 100), headers=JSON)
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    ok = httpx.post(f"{url}/search", json={"query": CAPTIONS[2], "top_k": 5})
    assert ok.status_code == 200 and ok.json()["results"][0]["video_id"] == "vid002"


def test_every_endpoint_but_health_and_metrics_wants_the_key(serve, monkeypatch):
    key = "k-" + secrets.token_hex(8)
    server = serve(api_key=key)
    spec = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    open_paths = {"/healthz", "/readyz", "/metrics"}
    operations = [(m.upper(), p) for p, ops in spec.items() for m in ops]
    assert len(operations) == 11
    for method, path in operations:
        url = f"{server.url}{path.replace('{video_id}', 'vid001')}"
        if path in open_paths:
            assert httpx.request(method, url).status_code == 200, path
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {key}"}, {"X-Api-Key": key}):
            r = httpx.request(method, url, headers=headers, json={"query": "a"})
            assert r.status_code == 401, (method, path, headers)
            assert "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        r = httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, json={"query": CAPTIONS[1]})
        assert r.status_code != 401, (method, path)
    # The comparison is secrets.compare_digest (constant time), not ==.
    import service.routes.deps as deps

    calls = []
    monkeypatch.setattr(deps.secrets, "compare_digest", lambda a, b: calls.append((a, b)) or a == b)
    assert httpx.post(f"{server.url}/search", json={"query": "a"}, headers={"Authorization": "Bearer x"}).status_code
    assert calls == [(b"x", key.encode())]


def test_the_rest_of_a_refused_body_is_read_within_its_bounds(monkeypatch):
    """A 413 goes out after the rest of the body is read (so a client still sending reads the answer,
    not a reset connection), but never more than DRAIN_BYTES nor longer than DRAIN_SECONDS."""
    import asyncio

    from service import middleware

    monkeypatch.setattr(middleware, "DRAIN_BYTES", 10_000)
    monkeypatch.setattr(middleware, "DRAIN_SECONDS", 0.2)

    def body(parts: int, size: int = 1000, delay: float = 0.0):
        read = []

        async def receive():
            await asyncio.sleep(delay)
            read.append(1)
            return {"type": "http.request", "body": b"x" * size, "more_body": len(read) < parts}

        return receive, read

    receive, read = body(5)  # all of it, within the budget: read to the end
    asyncio.run(middleware.drain(receive))
    assert len(read) == 5
    receive, read = body(1000)  # far more than the budget: stops after 10 parts of 1,000 bytes
    asyncio.run(middleware.drain(receive))
    assert len(read) == 10
    receive, read = body(1000, delay=0.05)  # a slow sender: given up on at the deadline
    asyncio.run(middleware.drain(receive))
    assert 2 <= len(read) <= 5
