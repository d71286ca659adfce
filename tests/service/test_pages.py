import httpx
import pytest

from service.moments import Hit
from service.pages import BadPageToken, PageRequest
from tests.service.serving import CAPTIONS


def hit(video_id: str, score: float) -> Hit:
    return Hit(video_id, score, 0, 0.0, 0.0, 0.5)


def test_pages_cut_a_stable_order_and_say_where_the_next_begins():
    hits = [hit("c", 2.0), hit("a", 3.0), hit("b", 2.0), hit("d", 1.0), hit("e", 0.5)]
    first = PageRequest("q", 2, None)
    page, token = first.page(hits)
    assert [h.video_id for h in page] == ["a", "b"]  # equal scores ordered by id: b before c
    second = first.resume(token)
    assert second.offset == 2 and second.depth == 5
    page, token = second.page(hits)
    assert [h.video_id for h in page] == ["c", "d"] and token is not None
    page, token = second.resume(token).page(hits)
    assert [h.video_id for h in page] == ["e"] and token is None
    floor = PageRequest("q", 2, 1.5)
    page, token = floor.page(hits)
    assert [h.video_id for h in page] == ["a", "b"] and token is not None
    assert floor.resume(token).page(hits) == ([hit("c", 2.0)], None)  # d and e fall below the floor


def test_a_token_only_resumes_the_search_it_came_from():
    token = PageRequest("q", 2, None).token_for(2)
    for other in (PageRequest("other", 2, None), PageRequest("q", 3, None), PageRequest("q", 2, 0.1)):
        with pytest.raises(BadPageToken, match="another query"):
            other.resume(token)
    for garbage in ("", "abc", "bm90IGpzb24", PageRequest("q", 2, None).token_for(-4)):
        with pytest.raises(BadPageToken, match="not a token"):
            PageRequest("q", 2, None).resume(garbage)


def test_paging_through_the_api(serve):
    server = serve(max_page_depth=25)
    url = f"{server.url}/search"
    whole = httpx.post(url, json={"query": CAPTIONS[3], "top_k": 25}).json()["results"]
    seen, token = [], None
    for _ in range(5):
        body = {"query": CAPTIONS[3], "top_k": 5} | ({"page_token": token} if token else {})
        reply = httpx.post(url, json=body).json()
        seen += reply["results"]
        token = reply["next_page_token"]
    assert [r["video_id"] for r in seen] == [r["video_id"] for r in whole]  # pages add up to one long list
    assert len({r["video_id"] for r in seen}) == 25
    too_deep = httpx.post(url, json={"query": CAPTIONS[3], "top_k": 5, "page_token": token})
    assert too_deep.status_code == 422 and "GLCCL_MAX_PAGE_DEPTH" in too_deep.json()["detail"]
    other = httpx.post(url, json={"query": CAPTIONS[4], "top_k": 5, "page_token": token})
    assert other.status_code == 422 and "another query" in other.json()["detail"]
    bad = httpx.post(url, json={"query": CAPTIONS[3], "page_token": "nonsense"})
    assert bad.status_code == 422 and "not a token" in bad.json()["detail"]


def test_min_score(serve):
    server = serve()
    url = f"{server.url}/search"
    top = httpx.post(url, json={"query": CAPTIONS[3], "top_k": 10}).json()["results"]
    floor = top[4]["score"]
    kept = httpx.post(url, json={"query": CAPTIONS[3], "top_k": 10, "min_score": floor}).json()
    assert [r["video_id"] for r in kept["results"]] == [r["video_id"] for r in top[:5]]
    assert kept["next_page_token"] is None
    none = httpx.post(url, json={"query": CAPTIONS[3], "min_score": top[0]["score"] + 1}).json()
    assert none["results"] == [] and none["next_page_token"] is None
    batch = httpx.post(f"{url}/batch", json={"queries": [CAPTIONS[3]], "top_k": 10, "min_score": floor}).json()
    assert [r["video_id"] for r in batch["results"][0]["results"]] == [r["video_id"] for r in top[:5]]
    assert httpx.post(url, json={"query": "a", "min_score": "high"}).status_code == 422
