from __future__ import annotations

import httpx
import numpy as np

from ops.support.servers import RedisServer
from service.app import create_app
from service.catalog import Catalog, StoreSpec
from service.metadata import Filter
from service.settings import Settings
from tests.conftest import write_mp4
from tests.service.serving import CAPTIONS, FRAMES, LiveServer, answer_features, build_index


def features_json(frames: np.ndarray, n: int | None = None) -> dict:
    n = n or frames.shape[0]
    return {"frames": frames[:n].tolist(), "times": [1.5 * i for i in range(n)]}


def test_put_search_delete_and_restart(serve, service_files):
    server = serve()
    url = server.url
    # a new video that answers "a pink star moves" better than the one built for it
    target = CAPTIONS.index("a pink star moves")
    frames = answer_features(service_files["checkpoint"], [CAPTIONS[target]])[0]
    r = httpx.put(f"{url}/videos/new-1", json=features_json(frames, 3))
    assert r.status_code == 200, r.text
    assert r.json() == {"video_id": "new-1", "status": "created", "frames": 3, "metadata": {}}
    info = httpx.get(f"{url}/videos/new-1").json()
    assert info["frames"] == 3 and info["times"] == [0.0, 1.5, 3.0] and info["has_media"] is False
    hits = httpx.post(f"{url}/search", json={"query": CAPTIONS[target], "top_k": 3}).json()["results"]
    assert "new-1" in [h["video_id"] for h in hits]  # searchable at once
    assert httpx.put(f"{url}/videos/new-1", json=features_json(frames, 2)).json()["status"] == "replaced"
    assert httpx.delete(f"{url}/videos/vid000").json()["status"] == "deleted"
    assert httpx.get(f"{url}/videos/vid000").status_code == 404
    assert httpx.delete(f"{url}/videos/vid000").status_code == 404
    ids = {
        h["video_id"] for h in httpx.post(f"{url}/search", json={"query": CAPTIONS[0], "top_k": 40}).json()["results"]
    }
    assert "vid000" not in ids
    server.stop()

    again = serve()  # same index folder: the changes survived the restart
    assert httpx.get(f"{again.url}/videos/new-1").json()["frames"] == 2
    assert httpx.get(f"{again.url}/videos/vid000").status_code == 404
    assert httpx.get(f"{again.url}/readyz").json()["videos"] == len(CAPTIONS)  # one added, one deleted


def check_metadata_api(url: str, checkpoint) -> None:
    """PUT with metadata, GET, PATCH, filtered searches and their errors, on a running server."""
    target = CAPTIONS.index("a pink star moves")
    frames = answer_features(checkpoint, [CAPTIONS[target]])[0]
    meta = {"title": "Pink star", "tags": ["shapes", "pink"], "year": 2024, "published": "2024-03-01"}
    r = httpx.put(f"{url}/videos/meta-1", json={**features_json(frames), "metadata": meta})
    assert r.status_code == 200 and r.json()["metadata"] == meta, r.text
    assert httpx.get(f"{url}/videos/meta-1").json()["metadata"] == meta
    assert httpx.get(f"{url}/videos/vid001").json()["metadata"] == {}
    patched = httpx.patch(f"{url}/videos/meta-1", json={"year": 2025, "title": None, "url": "https://e.x/1"})
    assert patched.status_code == 200 and patched.json()["status"] == "updated"
    meta = {"tags": ["shapes", "pink"], "year": 2025, "published": "2024-03-01", "url": "https://e.x/1"}
    assert httpx.get(f"{url}/videos/meta-1").json()["metadata"] == meta

    def search(where: dict, **extra) -> httpx.Response:
        return httpx.post(f"{url}/search", json={"query": CAPTIONS[0], "top_k": 5, "filter": where, **extra})

    only = search({"field": "tags", "eq": "pink"}).json()["results"]  # the query names another video
    assert [h["video_id"] for h in only] == ["meta-1"] and only[0]["metadata"] == meta
    ranged = {"and": [{"field": "year", "gte": 2025}, {"field": "published", "lt": "2024-06-01"}]}
    assert [h["video_id"] for h in search(ranged).json()["results"]] == ["meta-1"]
    others = search({"not": {"field": "tags", "eq": "pink"}}).json()["results"]
    assert len(others) == 5 and "meta-1" not in [h["video_id"] for h in others]
    assert search({"field": "tags", "eq": "none such"}).json()["results"] == []
    batch = httpx.post(f"{url}/search/batch", json={"queries": CAPTIONS[:2], "filter": {"field": "year", "eq": 2025}})
    assert [[h["video_id"] for h in r["results"]] for r in batch.json()["results"]] == [["meta-1"], ["meta-1"]]

    # pages of a filtered search: a stable order, cut where the token says, each hit with its moment
    broad = {"not": {"field": "year", "eq": 1999}}  # every video
    whole = search(broad, top_k=6).json()["results"]
    one = search(broad, top_k=3).json()
    two = search(broad, top_k=3, page_token=one["next_page_token"]).json()
    assert [h["video_id"] for h in one["results"] + two["results"]] == [h["video_id"] for h in whole]
    assert all(h["start_s"] <= h["best_time_s"] < h["end_s"] for h in whole)
    floor = whole[2]["score"]
    assert [h["video_id"] for h in search(broad, min_score=floor).json()["results"]] == [
        h["video_id"] for h in whole if h["score"] >= floor
    ]
    first = search({"field": "tags", "in": ["pink", "x"]}, top_k=1).json()  # one match: no next page
    assert first["next_page_token"] is None
    paged = httpx.post(f"{url}/search", json={"query": CAPTIONS[0], "top_k": 2}).json()
    moved = search({"field": "tags", "eq": "pink"}, top_k=2, page_token=paged["next_page_token"])
    assert moved.status_code == 422 and "filter" in moved.json()["detail"]

    for bad, words in (
        ({"field": "year", "gte": 1, "lt": "2020-01-01"}, "not a mix"),
        ({"field": "year"}, "this one is empty"),
        ({"or": [{"field": "a", "eq": i} for i in range(65)]}, "at most 64 conditions"),
    ):
        r = search(bad)
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    for body, words in (([1, 2], "JSON object"), ({"tags": "x" * 20000}, "the limit is 16384")):
        r = httpx.patch(f"{url}/videos/meta-1", json=body)
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    r = httpx.patch(f"{url}/videos/meta-1", content=b"tags=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert httpx.patch(f"{url}/videos/nope", json={"a": 1}).status_code == 404
    r = httpx.put(f"{url}/videos/meta-2", json={**features_json(frames), "metadata": {"": 1}})
    assert r.status_code == 422 and "non-empty" in r.json()["detail"]
    assert httpx.get(f"{url}/videos/meta-2").status_code == 404  # refused whole: nothing stored


def test_metadata_put_patch_filter_restart_and_rebuild(serve, service_files, index_copy):
    server = serve()
    check_metadata_api(server.url, service_files["checkpoint"])
    server.stop()
    again = serve()  # the metadata survived the restart (local store journal)
    meta = httpx.get(f"{again.url}/videos/meta-1").json()["metadata"]
    assert meta["year"] == 2025 and "title" not in meta
    again.stop()
    with Catalog.open(index_copy) as catalog:
        before = catalog.generation
        catalog.compact()  # a new generation: the frames and their metadata copied into a new store
        assert catalog.generation != before and catalog.get_metadata(["meta-1"]) == [meta]


def test_metadata_of_an_uploaded_file(serve, tmp_path):
    server = serve()
    video = write_mp4(tmp_path / "clip.mp4", frames=8, size=32)
    with open(video, "rb") as f:
        files = {"file": ("clip.mp4", f, "video/mp4")}
        r = httpx.put(f"{server.url}/videos/up-1", files=files, data={"metadata": '{"title": "Clip", "tags": ["a"]}'})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{server.url}/videos/up-1").json()["metadata"] == {"title": "Clip", "tags": ["a"]}
    with open(video, "rb") as f:
        r = httpx.put(f"{server.url}/videos/up-2", files={"file": ("clip.mp4", f)}, data={"metadata": "{oops"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


def test_metadata_in_redis_is_kept_through_compaction(service_files, tmp_path, redis_server, redis_prefix):
    index = build_index(
        service_files["checkpoint"],
        tmp_path / "r",
        StoreSpec(backend="redis", url=redis_server.url, prefix=redis_prefix),
    )
    server = LiveServer(create_app(Settings(checkpoint=service_files["checkpoint"], index=index, log_json=False)))
    with server:
        check_metadata_api(server.url, service_files["checkpoint"])
    with Catalog.open(index) as catalog:
        catalog.compact()  # a new generation over the same Redis prefix
        assert catalog.get_metadata(["meta-1"])[0]["year"] == 2025
        assert catalog.matching(Filter.model_validate({"field": "tags", "eq": "pink"})) == {"meta-1"}


def test_upload_a_video_file_then_see_its_frame_and_play_it(serve, tmp_path):
    server = serve()
    video = write_mp4(tmp_path / "clip.mp4", frames=16, size=32)
    with open(video, "rb") as f:
        r = httpx.put(f"{server.url}/videos/clip-7", files={"file": ("clip.mp4", f, "video/mp4")})
    assert r.status_code == 200, r.text
    assert r.json()["frames"] == FRAMES
    info = httpx.get(f"{server.url}/videos/clip-7").json()
    assert info["has_media"] is True and info["times"] == sorted(info["times"])
    jpeg = httpx.get(f"{server.url}/videos/clip-7/frame", params={"t": info["times"][-1]})
    assert jpeg.status_code == 200 and jpeg.content[:3] == b"\xff\xd8\xff"
    played = httpx.get(f"{server.url}/videos/clip-7/file")
    assert played.content == video.read_bytes()


def test_bad_video_requests(serve, tmp_path):
    server = serve(max_upload_bytes=4096)
    url = server.url
    assert httpx.put(f"{url}/videos/x", content=b"raw", headers={"content-type": "video/mp4"}).status_code == 415
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with open(junk, "rb") as f:
        r = httpx.put(f"{url}/videos/x", files={"file": ("junk.mp4", f)})
    detail = r.json()["detail"]
    assert r.status_code == 422 and "not a video we can decode" in detail
    assert "/" not in detail and "Error" not in detail  # no server path, no library internals
    with open(junk, "rb") as f:
        r = httpx.put(f"{url}/videos/x", files={"file": ("junk.txt", f)})
    assert r.status_code == 415
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\x00" * 10_000)
    with open(big, "rb") as f:
        assert httpx.put(f"{url}/videos/x", files={"file": ("big.mp4", f)}).status_code == 413
    assert httpx.put(f"{url}/videos/x", json={"frames": [[1.0, 2.0]]}).status_code == 422
    assert httpx.put(f"{url}/videos/x", json={"frames": [[float("1e6")] * 32]}).status_code == 422
    assert httpx.put(f"{url}/videos/x", json={"frames": [[0.0] * 32] * 9}).status_code == 422
    assert httpx.put(f"{url}/videos/x", json={"frames": [[0.0] * 32], "times": [1, 2]}).status_code == 422
    r = httpx.put(f"{url}/videos/..hidden", json={"frames": [[0.0] * 32]})
    assert r.status_code == 422 and "video id" in r.json()["detail"]
    assert httpx.get(f"{url}/videos/a%2Fb").status_code in (404, 422)
    assert httpx.get(f"{url}/videos/x").status_code == 404
    assert httpx.get(f"{url}/videos/vid001/frame").status_code == 404  # features only, no media


def test_redis_outage_gives_503_then_recovers_without_restart(serve, service_files, tmp_path):
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        index = build_index(
            service_files["checkpoint"], tmp_path / "r", StoreSpec(backend="redis", url=redis.url, prefix="svc:")
        )
        server = serve(index=index, exhaustive="never")  # two stages: every search reads frames from Redis
        resident = serve(index=index)  # the small corpus is served exhaustively, from its resident copy
        for s in (server, resident):
            ok = httpx.post(f"{s.url}/search", json={"query": CAPTIONS[5], "top_k": 3})
            assert ok.status_code == 200 and ok.json()["results"][0]["video_id"] == "vid005"
        redis.stop()
        kept = httpx.post(f"{resident.url}/search", json={"query": CAPTIONS[5], "top_k": 3}, timeout=20)
        assert kept.status_code == 200 and kept.json()["results"][0]["video_id"] == "vid005"
        down = httpx.get(f"{server.url}/readyz", timeout=10)
        assert down.status_code == 503 and down.json()["status"] == "store unavailable"
        failed = httpx.post(f"{server.url}/search", json={"query": CAPTIONS[5]}, timeout=20)
        assert failed.status_code == 503 and "feature store unavailable" in failed.json()["detail"]
        redis.start()
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        back = httpx.post(f"{server.url}/search", json={"query": CAPTIONS[5], "top_k": 3}, timeout=20)
        assert back.status_code == 200 and back.json()["results"][0]["video_id"] == "vid005"
    finally:
        redis.stop()
