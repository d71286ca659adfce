"""A client generated from the live /openapi.json (openapi-python-client) calls every route, with good
and bad input: the schema must declare every answer the service sends, errors included, or the
generated client raises on it (raise_on_unexpected_status) or fails to parse it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_mp4
from tests.service.serving import CAPTIONS, FRAMES

CONFIG = """\
post_hooks: []
content_type_overrides:
  image/jpeg: application/octet-stream
  video/mp4: application/octet-stream
"""


def generate(url: str, root: Path):
    """The client package generated from the live schema, imported."""
    (root / "openapi.json").write_text(httpx.get(f"{url}/openapi.json").text)
    (root / "config.yml").write_text(CONFIG)
    tool = Path(sys.executable).parent / "openapi-python-client"
    argv = [str(tool), "generate", "--path", str(root / "openapi.json"), "--config", str(root / "config.yml")]
    done = subprocess.run(
        [*argv, "--meta", "none", "--output-path", str(root / "glccl_api_client")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout  # every route and answer was understood
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("glccl_api_client")
    finally:
        sys.path.remove(str(root))


@pytest.fixture
def api(serve, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_mp4(media / "vid003.mp4", frames=8, size=32, seed=3)
    server = serve(media_dirs=[media])
    package = generate(server.url, tmp_path)
    yield package, package.Client(base_url=server.url, raise_on_unexpected_status=True, timeout=30.0)
    for name in [m for m in sys.modules if m == "glccl_api_client" or m.startswith("glccl_api_client.")]:
        del sys.modules[name]


def error_of(response, status: int) -> str:
    """The parsed error body of a response that must have `status`."""
    from glccl_api_client.models import ErrorBody

    assert response.status_code == status, response.content
    assert isinstance(response.parsed, ErrorBody), response.parsed
    assert response.parsed.request_id  # every error carries the request id
    return response.parsed.detail


def test_every_route_through_the_generated_client(api):
    package, client = api
    from glccl_api_client.api.health import healthz, metrics, readyz
    from glccl_api_client.api.search import search, search_batch
    from glccl_api_client.api.videos import delete_video, frame, get_video, patch_video, put_video, video_file
    from glccl_api_client.models import (
        BatchSearchRequest,
        Filter,
        PatchVideoBody,
        PutVideoJsonVideoFeaturesIn,
        SearchRequest,
        SearchResponse,
        VideoChanged,
        VideoInfo,
    )

    with client:
        assert healthz.sync(client=client).status == "ok"
        ready = readyz.sync(client=client)
        assert ready.status == "ready" and ready.videos == len(CAPTIONS)
        assert b"glccl_search_stage_seconds" in metrics.sync_detailed(client=client).content

        found = search.sync(client=client, body=SearchRequest(query=CAPTIONS[3], top_k=3))
        assert isinstance(found, SearchResponse) and found.results[0].video_id == "vid003"
        for hit in found.results:
            assert hit.start_s <= hit.best_time_s < hit.end_s
        assert found.timing_ms.exhaustive is not None  # the small corpus is served exhaustively
        assert "query" in error_of(search.sync_detailed(client=client, body=SearchRequest(query="   ")), 422)
        assert "top_k" in error_of(search.sync_detailed(client=client, body=SearchRequest(query="a", top_k=0)), 422)
        both = search_batch.sync(client=client, body=BatchSearchRequest(queries=[CAPTIONS[1], CAPTIONS[2]], top_k=2))
        assert [r.results[0].video_id for r in both.results] == ["vid001", "vid002"]
        assert error_of(search_batch.sync_detailed(client=client, body=BatchSearchRequest(queries=[])), 422)

        info = get_video.sync("vid003", client=client)
        assert isinstance(info, VideoInfo) and 1 <= info.frames <= FRAMES == 4 and len(info.times) == info.frames
        assert info.has_media
        assert "no video" in error_of(get_video.sync_detailed("nope", client=client), 404)
        assert "video id" in error_of(get_video.sync_detailed("..hidden", client=client), 422)

        features = PutVideoJsonVideoFeaturesIn(frames=[[0.1] * 32, [0.2] * 32], times=[0.0, 0.5])
        changed = put_video.sync("fresh", client=client, body=features)
        assert isinstance(changed, VideoChanged) and changed.status == "created" and changed.frames == 2
        assert get_video.sync("fresh", client=client).times == [0.0, 0.5]
        wrong = PutVideoJsonVideoFeaturesIn(frames=[[0.1] * 31])
        assert "frames must be" in error_of(put_video.sync_detailed("bad", client=client, body=wrong), 422)
        tagged = PutVideoJsonVideoFeaturesIn.from_dict(
            {"frames": [[0.3] * 32], "metadata": {"title": "Tagged", "tags": ["x"], "year": 2024}}
        )
        assert put_video.sync("tagged", client=client, body=tagged).metadata.additional_properties["year"] == 2024
        patch = PatchVideoBody.from_dict({"year": 2025, "title": None})
        assert patch_video.sync("tagged", client=client, body=patch).status == "updated"
        assert get_video.sync("tagged", client=client).metadata.additional_properties == {"tags": ["x"], "year": 2025}
        assert "no video" in error_of(patch_video.sync_detailed("nope", client=client, body=patch), 404)
        where = Filter.from_dict({"and": [{"field": "tags", "in": ["x"]}, {"field": "year", "gte": 2025}]})
        only = search.sync(client=client, body=SearchRequest(query=CAPTIONS[3], top_k=3, filter_=where))
        assert [h.video_id for h in only.results] == ["tagged"]
        assert only.results[0].metadata.additional_properties["tags"] == ["x"]
        mixed = Filter.from_dict({"field": "year", "gte": 1, "lt": "2020-01-01"})
        refused = search.sync_detailed(client=client, body=SearchRequest(query="a", filter_=mixed))
        assert "not a mix" in error_of(refused, 422)
        assert delete_video.sync("tagged", client=client).status == "deleted"
        assert delete_video.sync("fresh", client=client).status == "deleted"
        assert "no video" in error_of(delete_video.sync_detailed("fresh", client=client), 404)

        jpeg = frame.sync_detailed("vid003", client=client, t=0.1)
        assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
        assert "beyond the end" in error_of(frame.sync_detailed("vid003", client=client, t=1e6), 422)
        assert "no media file" in error_of(frame.sync_detailed("vid001", client=client), 404)
        mp4 = video_file.sync_detailed("vid003", client=client)
        assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"
        assert "no media file" in error_of(video_file.sync_detailed("vid001", client=client), 404)
    assert package.errors.UnexpectedStatus  # an undeclared status would have raised above


def test_head_answers_where_get_does(serve, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    write_mp4(media / "vid003.mp4", frames=8, size=32, seed=3)
    server = serve(media_dirs=[media])
    for path in ("/healthz", "/readyz", "/videos/vid003", "/videos/vid003/frame?t=0.2", "/videos/vid003/file", "/docs"):
        get, head = httpx.get(server.url + path), httpx.head(server.url + path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert httpx.head(server.url + "/videos/nope").status_code == 404
    assert httpx.get(server.url + "/videos/vid003/frame?t=nan").status_code == 422
    assert httpx.get(server.url + "/videos/vid003/frame?t=inf").status_code == 422


def test_docs_are_served_without_a_cdn(serve):
    server = serve()
    page = httpx.get(server.url + "/docs").text
    assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
    script = httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert httpx.get(server.url + "/docs-assets/swagger-ui.css").status_code == 200
    icon = httpx.get(server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
