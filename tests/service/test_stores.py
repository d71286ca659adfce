from __future__ import annotations

import numpy as np
import pytest
import redis

from ops.support.servers import RedisServer
from service.stores.base import FrameStore, StoreManifest, StoreMismatch, StoreUnavailable, VideoNotFound
from service.stores.local import LocalStore, StoreBusy
from service.stores.redis_store import RedisStore

F, D = 4, 8
MANIFEST = StoreManifest(dim=D, frames=F, model_hash="abc123")


def videos(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((n, F, D)).astype(np.float32)
    mask = np.arange(F)[None] < rng.integers(1, F + 1, n)[:, None]  # padded frames at the end
    times = np.cumsum(rng.random((n, F)), axis=1).astype(np.float32)
    return [f"vid-{seed}-{i}" for i in range(n)], frames, mask, times


def expected(frames: np.ndarray, mask: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a store must give back: fp16 frames and times with the padding zeroed."""
    return np.where(mask[..., None], frames, 0).astype(np.float16), np.where(mask, times, 0).astype(np.float32)


@pytest.fixture(params=["local", "redis", "redis-cluster"])
def store(request, tmp_path, redis_prefix) -> FrameStore:
    if request.param == "local":
        s: FrameStore = LocalStore.create(tmp_path / "store", MANIFEST)
    elif request.param == "redis":
        s = RedisStore.connect(request.getfixturevalue("redis_server").url, redis_prefix, manifest=MANIFEST)
    else:
        url = request.getfixturevalue("redis_cluster").url
        s = RedisStore.connect(url, redis_prefix, cluster=True, manifest=MANIFEST)
    yield s
    s.close()


def test_round_trip_in_any_order(store):
    ids, frames, mask, times = videos(6)
    store.put_many(ids, frames, mask, times)
    want_frames, want_times = expected(frames, mask, times)
    order = [4, 0, 4, 2]  # repeats allowed, order kept
    batch = store.get([ids[i] for i in order])
    assert batch.frames.dtype == np.float16 and batch.frames.shape == (4, F, D)
    np.testing.assert_array_equal(batch.frames, want_frames[order])
    np.testing.assert_array_equal(batch.mask, mask[order])
    np.testing.assert_array_equal(batch.times, want_times[order])
    assert len(store) == 6 and sorted(store.ids()) == sorted(ids)
    assert ids[3] in store and "nope" not in store
    assert len(store.get([])) == 0


def test_single_put_replace_and_delete(store):
    ids, frames, mask, times = videos(3)
    store.put_many(ids, frames, mask, times)
    _, new_frames, new_mask, new_times = videos(1, seed=9)
    store.put(ids[1], new_frames[0], new_mask[0], new_times[0])  # replace
    assert len(store) == 3
    got = store.get([ids[1], ids[0]])
    np.testing.assert_array_equal(got.frames[0], expected(new_frames, new_mask, new_times)[0][0])
    np.testing.assert_array_equal(got.frames[1], expected(frames, mask, times)[0][0])
    assert store.delete(ids[1]) is True
    assert store.delete(ids[1]) is False
    assert ids[1] not in store and len(store) == 2
    with pytest.raises(VideoNotFound, match=ids[1]) as info:
        store.get([ids[0], ids[1]])
    assert info.value.missing == [ids[1]]


def test_metadata_is_kept_replaced_changed_and_dropped_with_the_video(store):
    ids, frames, mask, times = videos(3)
    metas = [{"title": "first", "tags": ["a", "b"]}, {}, {"n": 1, "nested": {"k": "v"}}]
    store.put_many(ids, frames, mask, times, metas)
    assert store.get_metadata([ids[2], ids[1], ids[0], "nope"]) == [metas[2], {}, metas[0], {}]
    assert store.all_metadata() == {ids[0]: metas[0], ids[2]: metas[2]}
    assert store.set_metadata(ids[1], {"title": "second"}) is True
    np.testing.assert_array_equal(store.get([ids[1]]).frames[0], expected(frames, mask, times)[0][1])  # frames kept
    assert store.set_metadata("nope", {"title": "x"}) is False and "nope" not in store
    store.put(ids[0], frames[0], mask[0], times[0])  # a replacement without metadata has none
    assert store.get_metadata([ids[0], ids[1]]) == [{}, {"title": "second"}]
    store.delete(ids[2])
    assert store.all_metadata() == {ids[1]: {"title": "second"}}
    with pytest.raises(ValueError, match="2 metadata objects for 1 videos"):
        store.put_many(ids[:1], frames[:1], mask[:1], times[:1], [{}, {}])


def test_local_metadata_survives_reopen_and_compaction(tmp_path):
    ids, frames, mask, times = videos(4)
    store = LocalStore.create(tmp_path / "s", MANIFEST, shard_rows=2)
    store.put_many(ids, frames, mask, times, [{"i": i} for i in range(4)])
    store.set_metadata(ids[1], {"i": 10})
    store.put(ids[2], frames[0], mask[0], times[0], {"i": 20})
    store.delete(ids[3])
    want = {ids[0]: {"i": 0}, ids[1]: {"i": 10}, ids[2]: {"i": 20}}
    assert store.all_metadata() == want
    store.close()
    with LocalStore.open(tmp_path / "s", readonly=False) as reopened:  # replayed from the journal
        assert reopened.all_metadata() == want
        assert reopened.compact() == 2
        assert reopened.all_metadata() == want
    with LocalStore.open(tmp_path / "s") as compacted:
        assert compacted.all_metadata() == want


def test_bad_input_is_refused_with_the_shape(store):
    with pytest.raises(ValueError, match=r"frames has shape \(3, 8\), the store holds \(4, 8\)"):
        store.put("x", np.zeros((3, D)), np.ones(3, bool), np.zeros(3))
    bad = np.zeros((F, D))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.put("x", bad, np.ones(F, bool), np.zeros(F))
    with pytest.raises(ValueError, match="video ids"):
        store.put("", np.zeros((F, D)), np.ones(F, bool), np.zeros(F))
    assert len(store) == 0


def test_manifest_mismatch_lists_every_difference(store):
    store.check_compatible(MANIFEST)
    other = StoreManifest(dim=16, frames=F, model_hash="other")
    with pytest.raises(StoreMismatch) as info:
        store.check_compatible(other)
    message = str(info.value)
    assert "dim: 8 (store) != 16 (expected)" in message
    assert "model_hash: 'abc123' (store) != 'other' (expected)" in message
    assert "frames" not in message


# ------------------------------------------------------------------------------------------ local


def test_local_survives_reopen_and_ignores_a_torn_journal_line(tmp_path):
    ids, frames, mask, times = videos(5)
    with LocalStore.create(tmp_path / "s", MANIFEST) as store:
        store.put_many(ids, frames, mask, times)
        store.delete(ids[0])
    journal = next((tmp_path / "s").glob("*.journal"))
    with open(journal, "ab") as f:
        f.write(b'["p", "half-writ')  # a crash mid-append
    with LocalStore.open(tmp_path / "s") as store:
        assert sorted(store.ids()) == sorted(ids[1:])
        np.testing.assert_array_equal(store.get([ids[4]]).frames[0], expected(frames, mask, times)[0][4])
    with LocalStore.open(tmp_path / "s", readonly=False) as store:
        store.put("after", frames[0], mask[0], times[0])  # the writer drops the torn tail first
    with LocalStore.open(tmp_path / "s") as store:
        assert "after" in store and len(store) == 5


def test_local_read_only_and_single_writer(tmp_path):
    ids, frames, mask, times = videos(2)
    writer = LocalStore.create(tmp_path / "s", MANIFEST)
    writer.put_many(ids, frames, mask, times)
    reader = LocalStore.open(tmp_path / "s")
    with pytest.raises(PermissionError, match="read-only"):
        reader.delete(ids[0])
    second = LocalStore.open(tmp_path / "s", readonly=False)
    with pytest.raises(StoreBusy, match="another process"):
        second.put("x", frames[0], mask[0], times[0])
    writer.put("late", frames[1], mask[1], times[1])
    assert "late" not in reader
    reader.refresh()
    assert "late" in reader
    for s in (writer, reader, second):
        s.close()


def test_local_shards_rotate_and_compaction_keeps_live_rows(tmp_path):
    ids, frames, mask, times = videos(10)
    store = LocalStore.create(tmp_path / "s", MANIFEST, shard_rows=3)
    store.put_many(ids, frames, mask, times)
    store.put_many(ids[:4], frames[4:8], mask[4:8], times[4:8])  # replaces: 4 dead rows
    store.delete(ids[9])  # 5 dead
    assert len(list((tmp_path / "s").glob("g0001-*.rows"))) == 5  # 14 rows in shards of 3
    before = store.get(ids[:9])
    assert store.compact() == 5
    assert store.stats()["dead_rows"] == 0 and not list((tmp_path / "s").glob("g0001*"))
    after = store.get(ids[:9])
    np.testing.assert_array_equal(after.frames, before.frames)
    np.testing.assert_array_equal(after.times, before.times)
    store.close()
    with LocalStore.open(tmp_path / "s") as reopened:
        np.testing.assert_array_equal(reopened.get(ids[:9]).frames, before.frames)
        assert ids[9] not in reopened


def test_local_create_refuses_a_used_directory_and_open_a_missing_one(tmp_path):
    LocalStore.create(tmp_path / "s", MANIFEST).close()
    with pytest.raises(FileExistsError, match="already holds a frame store"):
        LocalStore.create(tmp_path / "s", MANIFEST)
    with pytest.raises(FileNotFoundError, match="not a frame store"):
        LocalStore.open(tmp_path / "nothing")
    with pytest.raises(StoreMismatch, match="model_hash"):
        LocalStore.open_or_create(tmp_path / "s", StoreManifest(dim=D, frames=F, model_hash="zzz"))


# ------------------------------------------------------------------------------------------ redis


def test_redis_survives_a_server_restart(tmp_path, redis_prefix):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        ids, frames, mask, times = videos(4)
        with RedisStore.connect(server.url, redis_prefix, manifest=MANIFEST) as store:
            store.put_many(ids, frames, mask, times)
            store.delete(ids[2])
        server.stop()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            RedisStore.connect(server.url, redis_prefix, timeout_s=0.5)
        server.start()
        with RedisStore.connect(server.url, redis_prefix) as store:
            assert store.manifest == MANIFEST
            assert sorted(store.ids()) == sorted([ids[0], ids[1], ids[3]])
            np.testing.assert_array_equal(store.get([ids[3]]).frames[0], expected(frames, mask, times)[0][3])
            server.stop()
            with pytest.raises(StoreUnavailable):
                store.ping()
            with pytest.raises(StoreUnavailable):
                store.get([ids[0]])
    finally:
        server.stop()


def test_redis_prefixes_are_separate_and_checked(redis_server, redis_prefix):
    ids, frames, mask, times = videos(2)
    with RedisStore.connect(redis_server.url, redis_prefix, manifest=MANIFEST) as store:
        store.put_many(ids, frames, mask, times)
    with pytest.raises(StoreMismatch, match="model_hash: 'abc123' \\(store\\) != 'x' \\(expected\\)"):
        RedisStore.connect(redis_server.url, redis_prefix, manifest=StoreManifest(dim=D, frames=F, model_hash="x"))
    with pytest.raises(StoreMismatch, match="no frame store"):
        RedisStore.connect(redis_server.url, redis_prefix + "other:")
    with pytest.raises(ValueError, match="braces"):
        RedisStore.connect(redis_server.url, "{bad}")


def test_redis_cluster_spreads_videos_over_every_node(redis_cluster, redis_prefix):
    ids, frames, mask, times = videos(60)
    with RedisStore.connect(redis_cluster.url, redis_prefix, cluster=True, manifest=MANIFEST) as store:
        store.put_many(ids, frames, mask, times)
        per_node = []
        for server in redis_cluster.servers:
            node = redis.Redis(host="127.0.0.1", port=server.port)
            per_node.append(sum(1 for _ in node.scan_iter(match=f"{redis_prefix}v:*", count=1000)))
            node.close()
        assert sum(per_node) == 60 and min(per_node) > 0  # no hash tag funnels them into one slot
        got = store.get(ids[::-1])
        np.testing.assert_array_equal(got.frames, expected(frames, mask, times)[0][::-1])


def test_preload_maps_every_shard_of_a_local_store_and_changes_no_answer(tmp_path):
    ids, frames, mask, times = videos(10)
    store = LocalStore.create(tmp_path / "s", MANIFEST, shard_rows=3)
    store.put_many(ids, frames, mask, times)
    record = store.stats()["record_bytes"]
    store.close()
    with LocalStore.open(tmp_path / "s") as reopened:
        before = reopened.get(ids[::-1])
        reopened._maps.clear()  # nothing mapped yet
        assert reopened.preload() == 10 * record  # every row of the 4 shard files (3 + 3 + 3 + 1)
        assert sorted(reopened._maps) == [0, 1, 2, 3]
        after = reopened.get(ids[::-1])
        np.testing.assert_array_equal(after.frames, before.frames)
        np.testing.assert_array_equal(after.times, before.times)


def test_preload_of_a_redis_store_is_nothing_to_do(redis_server, redis_prefix):
    store = RedisStore.connect(redis_server.url, redis_prefix, manifest=MANIFEST)
    ids, frames, mask, times = videos(2)
    store.put_many(ids, frames, mask, times)
    assert store.preload() == 0
    store.close()


@pytest.mark.parametrize("preload", [True, False])
def test_a_preloaded_service_reads_its_faiss_index_into_memory(service_files, index_copy, preload):
    from service.engine import Query
    from service.settings import Settings
    from service.state import ServiceState

    def mapped_shards() -> list[str]:  # FAISS shard files of this index mapped into the process
        lines = open("/proc/self/maps").read().splitlines()
        return [line for line in lines if str(index_copy) in line and line.endswith(".faiss")]

    state = ServiceState.load(Settings(checkpoint=service_files["checkpoint"], index=index_copy, preload=preload))
    try:
        assert bool(mapped_shards()) is not preload  # mapped lists fault in on the queries that probe them
        assert len(state.engine.search([Query("a red circle", 3)])[0].hits) == 3
    finally:
        state.close()
    assert not mapped_shards()


def test_get_unordered_reads_what_get_reads_in_the_stores_order(tmp_path):
    ids, frames, mask, times = videos(10)
    store = LocalStore.create(tmp_path / "s", MANIFEST, shard_rows=3)
    store.put_many(ids, frames, mask, times)
    store.put(ids[1], frames[9], mask[9], times[9])  # replaced: its row moves to the last shard file
    wanted = [ids[7], ids[1], ids[0], ids[8], ids[4]]
    got_frames, got_mask, order = store.get_unordered(wanted)
    assert sorted(order.tolist()) == list(range(len(wanted)))
    plain = store.get(wanted)
    np.testing.assert_array_equal(got_frames, plain.frames[order])
    np.testing.assert_array_equal(got_mask, plain.mask[order])
    # shard file by shard file, rows ascending; the replaced video last (its new row is in the last file)
    assert [wanted[i] for i in order.tolist()] == [ids[0], ids[4], ids[7], ids[8], ids[1]]
    again, _, order = store.get_unordered(wanted[:2])
    np.testing.assert_array_equal(again, store.get(wanted[:2]).frames[order])
    with pytest.raises(VideoNotFound):
        store.get_unordered([ids[0], "nope"])
    store.close()
