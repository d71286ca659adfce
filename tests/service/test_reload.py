"""Hot reload: a new index generation, and other replicas' changes, go live without a restart."""

from __future__ import annotations

import json
import threading
import time

import httpx

from service.catalog import StoreSpec, build_catalog
from service.index import IndexParams
from service.stores.local import LocalStore
from tests.service.serving import CAPTIONS, answer_features, write_features


def wait_for(check, timeout_s: float = 30.0, what: str = "condition"):
    """Polls `check` until it returns something truthy (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


class Searcher(threading.Thread):
    """Searches in a loop until stopped, keeping every status it got."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.stopping = url, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stopping.is_set():
                self.statuses.append(client.post("/search", json={"query": CAPTIONS[i % 40], "top_k": 3}).status_code)
                i += 1

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        return self.statuses


def test_a_new_generation_goes_live_under_searches_and_keeps_api_ingests(serve, service_files, index_copy, tmp_path):
    checkpoint = service_files["checkpoint"]
    server = serve(reload_interval_s=0.2)
    url = server.url
    ingested = answer_features(checkpoint, ["a green ring moves"])[0]
    put = {"frames": ingested.tolist(), "metadata": {"title": "api one"}}
    assert httpx.put(f"{url}/videos/api-1", json=put).status_code == 200
    assert httpx.patch(f"{url}/videos/vid005", json={"tags": ["kept"]}).status_code == 200
    old = httpx.get(f"{url}/readyz").json()["generation"]

    # The rebuild knows nothing of api-1, drops vid000 and adds fresh-1.
    captions = CAPTIONS[1:] + ["a black hexagon spins"]
    ids = [f"vid{i:03d}" for i in range(1, 40)] + ["fresh-1"]
    features = write_features(checkpoint, tmp_path / "features-2", captions, ids)
    searcher = Searcher(url)
    searcher.start()
    wait_for(lambda: len(searcher.statuses) >= 5, what="searches under way")
    with LocalStore.open(features) as source:
        build_catalog(source, index_copy, IndexParams(kind="flat", shards=2), StoreSpec())
    new = wait_for(
        lambda: (g := httpx.get(f"{url}/readyz").json().get("generation")) != old and g, what="the new generation"
    )
    count = len(searcher.statuses)
    wait_for(lambda: len(searcher.statuses) >= count + 5, what="searches on the new generation")
    statuses = searcher.stop()
    assert set(statuses) == {200}, statuses  # no search failed across the switch

    assert httpx.get(f"{url}/videos/fresh-1").status_code == 200
    assert httpx.get(f"{url}/videos/vid000").status_code == 404
    assert httpx.get(f"{url}/videos/api-1").status_code == 200  # the acknowledged ingest was carried over
    assert httpx.get(f"{url}/videos/api-1").json()["metadata"] == {"title": "api one"}  # with its metadata
    assert httpx.get(f"{url}/videos/vid005").json()["metadata"] == {"tags": ["kept"]}  # and the patch
    hits = httpx.post(f"{url}/search", json={"query": "a black hexagon spins", "top_k": 3}).json()["results"]
    assert "fresh-1" in [h["video_id"] for h in hits]
    assert "glccl_index_reloads_total 1.0" in httpx.get(f"{url}/metrics").text
    server.stop()
    again = serve()  # and the carried ingest is in the new generation's own log: it survives a restart
    assert httpx.get(f"{again.url}/readyz").json()["generation"] == new
    assert httpx.get(f"{again.url}/videos/api-1").status_code == 200
    assert httpx.get(f"{again.url}/videos/vid005").json()["metadata"] == {"tags": ["kept"]}


def test_changes_made_through_another_replica_appear_without_restart(serve, service_files):
    writer, reader = serve(reload_interval_s=0.2), serve(reload_interval_s=0.2)
    frames = answer_features(service_files["checkpoint"], [CAPTIONS[7]])[0]
    assert httpx.put(f"{writer.url}/videos/other-1", json={"frames": frames.tolist()}).status_code == 200
    assert httpx.delete(f"{writer.url}/videos/vid002").status_code == 200
    wait_for(lambda: httpx.get(f"{reader.url}/videos/other-1").status_code == 200, what="the put on the reader")
    wait_for(lambda: httpx.get(f"{reader.url}/videos/vid002").status_code == 404, what="the delete on the reader")
    assert httpx.patch(f"{writer.url}/videos/vid003", json={"tags": ["seen"]}).status_code == 200
    wait_for(
        lambda: httpx.get(f"{reader.url}/videos/vid003").json()["metadata"] == {"tags": ["seen"]},
        what="the metadata change on the reader",
    )
    where = {"field": "tags", "eq": "seen"}
    hits = httpx.post(f"{reader.url}/search", json={"query": CAPTIONS[7], "filter": where}).json()["results"]
    assert [h["video_id"] for h in hits] == ["vid003"]
    hits = httpx.post(f"{reader.url}/search", json={"query": CAPTIONS[7], "top_k": 40}).json()["results"]
    ids = [h["video_id"] for h in hits]
    assert "other-1" in ids and "vid002" not in ids


def test_a_generation_that_will_not_open_leaves_the_old_one_serving(serve, index_copy):
    server = serve(reload_interval_s=0.2)
    info = json.loads((index_copy / "index.json").read_text())
    old = info["generation"]
    (index_copy / "gen-000099").mkdir()  # no ids, no shards: a broken copy
    (index_copy / "index.json").write_text(json.dumps({**info, "generation": "gen-000099"}))
    wait_for(
        lambda: 'glccl_errors_total{kind="reload"}' in httpx.get(f"{server.url}/metrics").text, what="the failed reload"
    )
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["generation"] == old
    assert httpx.post(f"{server.url}/search", json={"query": CAPTIONS[4], "top_k": 1}).status_code == 200
