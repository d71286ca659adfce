from __future__ import annotations

import httpx
import numpy as np

from ops.support.servers import RedisServer
from service.catalog import StoreSpec
from tests.conftest import write_mp4
from tests.service.serving import CAPTIONS, FRAMES, answer_features, build_index


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
    assert r.json() == {"video_id": "new-1", "status": "created", "frames": 3}
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
