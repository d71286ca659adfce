from __future__ import annotations

import concurrent.futures as cf
import re

import httpx

from tests.service.serving import CAPTIONS, FRAMES


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_search_returns_ranked_videos_with_their_best_moment(serve):
    server = serve()
    r = httpx.post(f"{server.url}/search", json={"query": CAPTIONS[3], "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == CAPTIONS[3]
    results = body["results"]
    assert len(results) == 5
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["video_id"] == "vid003"
    for x in results:
        assert 0 <= x["best_frame"] < FRAMES
        assert x["best_time_s"] == 0.5 * x["best_frame"]  # the index gives frame t the time 0.5 t
    # the test corpus is smaller than the pool: the exhaustive path ran (exact), and the timing says so
    stages = {"queue", "encode", "candidates", "frames", "narrow", "rerank", "total"}
    assert set(body["timing_ms"]) == stages | {"exhaustive"} and body["timing_ms"]["exhaustive"] > 0
    assert body["timing_ms"]["total"] >= body["timing_ms"]["encode"]
    assert 'glccl_search_stage_seconds_count{stage="exhaustive"} 1.0' in httpx.get(f"{server.url}/metrics").text


def test_two_stage_search_when_exhaustive_is_off(serve):
    server = serve(exhaustive="never")
    body = httpx.post(f"{server.url}/search", json={"query": CAPTIONS[3], "top_k": 5}).json()
    assert body["results"][0]["video_id"] == "vid003"
    assert body["timing_ms"]["exhaustive"] is None and body["timing_ms"]["candidates"] > 0  # the ANN pool ran
    assert 'stage="exhaustive"' not in httpx.get(f"{server.url}/metrics").text


def test_concurrent_clients_each_get_their_own_answer_and_batches_form(serve):
    server = serve(max_wait_ms=30.0)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        alone = {q: client.post("/search", json={"query": q, "top_k": 3}).json()["results"] for q in CAPTIONS}
        before = client.get("/metrics").text

        def ask(q: str):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return q, c.post("/search", json={"query": q, "top_k": 3})

        with cf.ThreadPoolExecutor(max_workers=len(CAPTIONS)) as pool:
            answers = list(pool.map(ask, CAPTIONS))
        after = client.get("/metrics").text
    for q, r in answers:
        assert r.status_code == 200
        got = r.json()
        assert got["query"] == q
        assert [x["video_id"] for x in got["results"]] == [x["video_id"] for x in alone[q]]
    batches = metric(after, "glccl_batch_size_count") - metric(before, "glccl_batch_size_count")
    queries = metric(after, "glccl_batch_size_sum") - metric(before, "glccl_batch_size_sum")
    assert queries == len(CAPTIONS)
    assert batches < len(CAPTIONS)  # several queries shared a batch


def test_batch_endpoint_answers_each_query_in_order(serve):
    server = serve()
    queries = CAPTIONS[:6]
    r = httpx.post(f"{server.url}/search/batch", json={"queries": queries, "top_k": 2})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["query"] for x in results] == queries
    single = httpx.post(f"{server.url}/search", json={"query": queries[4], "top_k": 2}).json()
    assert [x["video_id"] for x in results[4]["results"]] == [x["video_id"] for x in single["results"]]


def test_a_batch_request_larger_than_the_queue_is_refused_whole_and_not_computed(serve):
    server = serve(max_queue=4, max_batch_queries=8)
    r = httpx.post(f"{server.url}/search/batch", json={"queries": CAPTIONS[:6]})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "this request holds 6 queries" in r.json()["detail"]
    assert metric(httpx.get(f"{server.url}/metrics").text, "glccl_batch_size_count") == 0.0  # nothing computed
    r = httpx.post(f"{server.url}/search/batch", json={"queries": CAPTIONS[:4]})  # as many as the queue holds
    assert r.status_code == 200 and len(r.json()["results"]) == 4


def test_overload_answers_429_with_retry_after_not_timeouts(serve):
    server = serve(max_queue=1, max_batch=1, max_wait_ms=0.0)

    def ask(i: int):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/search", json={"query": CAPTIONS[i % len(CAPTIONS)]})

    with cf.ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(ask, range(96)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "overloaded" in refused.json()["detail"]


def test_bad_input_gets_422_with_a_message_that_says_what_to_fix(serve):
    server = serve(max_top_k=50, max_query_chars=100)
    cases = [
        ({"query": ""}, "query must contain some words"),
        ({"query": "   \t"}, "query must contain some words"),
        ({"query": "x" * 101}, "the limit is 100"),
        ({"query": "a red circle", "top_k": 0}, "top_k must be between 1 and 50"),
        ({"query": "a red circle", "top_k": 51}, "top_k must be between 1 and 50"),
        ({"query": "a red circle", "top_k": -3}, "top_k must be between 1 and 50"),
        ({"query": "a red circle", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"top_k": 3}, "query: Field required"),
        ({"query": 12}, "query: Input should be a valid string"),
    ]
    for body, message in cases:
        r = httpx.post(f"{server.url}/search", json=body)
        assert r.status_code == 422, (body, r.text)
        assert message in r.json()["detail"], (body, r.json())
    r = httpx.post(f"{server.url}/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = httpx.post(f"{server.url}/search", content=b"query=a", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = httpx.post(f"{server.url}/search/batch", json={"queries": []})
    assert r.status_code == 422 and "at least one query" in r.json()["detail"]


def test_health_readiness_and_metrics(serve):
    server = serve()
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["videos"] == len(CAPTIONS)
    httpx.post(f"{server.url}/search", json={"query": CAPTIONS[0]})
    text = httpx.get(f"{server.url}/metrics").text
    for stage in ("queue", "encode", "candidates", "frames", "narrow", "rerank", "total"):
        assert f'glccl_search_stage_seconds_count{{stage="{stage}"}}' in text
    assert metric(text, "glccl_videos") == len(CAPTIONS)
    assert "glccl_queue_depth" in text


def test_api_key_guards_everything_but_health_and_metrics(serve):
    server = serve(api_key="s3cret-key")
    for method, path in [("post", "/search"), ("get", "/videos/vid001"), ("delete", "/videos/vid001")]:
        r = httpx.request(method.upper(), f"{server.url}{path}", json={"query": "a red circle"})
        assert r.status_code == 401, path
        assert "API key" in r.json()["detail"]
    wrong = httpx.post(f"{server.url}/search", json={"query": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.post(f"{server.url}/search", json={"query": "x"}, headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}").status_code == 200


def test_body_size_limit(serve):
    server = serve(max_body_bytes=2048)
    r = httpx.post(f"{server.url}/search", json={"query": "a " * 2000})
    assert r.status_code == 413 and "2048 bytes" in r.json()["detail"]


def test_a_query_past_its_time_limit_answers_503_and_the_service_goes_on(serve):
    # shorter than any encode: every query times out (the queue-wait bound set apart, or it would answer 429 first)
    server = serve(request_timeout_s=0.0005, max_queue_wait_s=10.0)
    r = httpx.post(f"{server.url}/search", json={"query": CAPTIONS[1]})
    assert r.status_code == 503 and "timed out" in r.json()["detail"]
    assert r.headers["retry-after"] == "1"
    assert 'glccl_errors_total{kind="timeout"}' in httpx.get(f"{server.url}/metrics").text
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_the_openapi_schema_documents_every_endpoint(serve):
    server = serve()
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/search", "/search/batch", "/videos/{video_id}", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    assert {"get", "put", "delete"} <= set(paths["/videos/{video_id}"])
    put = paths["/videos/{video_id}"]["put"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(put)
    assert httpx.get(f"{server.url}/docs").status_code == 200
