"""Admission control on a real server: the cap on searches in progress answers the excess 429 at once,
and a query that waited too long for its batch is answered 429 without being computed."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx

from service.engine import SearchEngine
from tests.service.serving import CAPTIONS
from tests.service.test_reload import wait_for
from tests.service.test_search_api import metric as parse_metric


def metric(url: str, name: str) -> float:
    return parse_metric(httpx.get(f"{url}/metrics").text, name)


def test_searches_beyond_the_in_flight_cap_get_429_at_once_and_the_admitted_ones_200(serve):
    # A batch waits 3 s for company, so the admitted searches stay in progress while the burst arrives.
    server = serve(max_in_flight=4, max_wait_ms=3000.0, max_batch=64)

    def ask(i: int) -> tuple[httpx.Response, float]:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/search", json={"query": CAPTIONS[i % len(CAPTIONS)], "top_k": 3})
            return r, time.monotonic()

    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        admitted = [pool.submit(ask, i) for i in range(4)]
        wait_for(lambda: metric(server.url, "glccl_search_in_flight") == 4.0, what="4 searches in progress")
        burst = [pool.submit(ask, i) for i in range(4, 16)]
        refused = [f.result() for f in burst]
        answered = [f.result() for f in admitted]

    assert [r.status_code for r, _ in refused] == [429] * 12
    for r, _ in refused:
        assert r.headers["retry-after"] == "1"
        assert "GLCCL_MAX_IN_FLIGHT" in r.json()["detail"] and r.json()["request_id"]
    assert [r.status_code for r, _ in answered] == [200] * 4
    assert all(len(r.json()["results"]) == 3 for r, _ in answered)
    assert max(t for _, t in refused) < min(t for _, t in answered)  # refused while the others still waited
    assert metric(server.url, 'glccl_errors_total{kind="overload_in_flight"}') == 12.0
    assert metric(server.url, 'glccl_http_requests_total{route="/search",status="429"}') == 12.0
    # The cap is free again once they are answered.
    assert metric(server.url, "glccl_search_in_flight") == 0.0
    assert httpx.post(f"{server.url}/search", json={"query": CAPTIONS[0]}, timeout=30).status_code == 200


def test_a_query_that_waited_too_long_for_its_batch_is_refused_uncomputed(serve, monkeypatch):
    computed: list[str] = []
    encode = SearchEngine.encode_batch  # the first stage, pipelined or not

    def slow_encode(self, queries):
        computed.extend(q.text for q in queries)
        time.sleep(1.0)
        return encode(self, queries)

    monkeypatch.setattr(SearchEngine, "encode_batch", slow_encode)
    server = serve(max_batch=1, max_wait_ms=0.0, max_queue_wait_s=0.3)
    computed.clear()  # the warm-up's

    def ask(i: int) -> httpx.Response:
        return httpx.post(f"{server.url}/search", json={"query": CAPTIONS[i]}, timeout=30)

    with cf.ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(ask, 0)
        wait_for(lambda: computed == [CAPTIONS[0]], what="the first search computing")
        late = list(pool.map(ask, (1, 2)))
        assert first.result().status_code == 200
    # Both waited about 1 s behind the first (one batch at a time): over the 0.3 s bound.
    assert [r.status_code for r in late] == [429, 429]
    assert all("waited" in r.json()["detail"] and r.headers["retry-after"] == "1" for r in late)
    assert computed == [CAPTIONS[0]]
    assert metric(server.url, 'glccl_errors_total{kind="overload_queue_wait"}') == 2.0
