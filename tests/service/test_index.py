from __future__ import annotations

import json

import numpy as np
import pytest

import service.index as index_module
from service.candidates import CandidateIndex
from service.catalog import Catalog, StoreSpec, build_catalog
from service.index import FrameIndex, IndexParams, ShardBuilder, build_shards
from service.stores.base import FrameBatch, StoreManifest, StoreMismatch
from service.stores.local import LocalStore
from service.stores.redis_store import RedisStore

F, D = 5, 16
MANIFEST = StoreManifest(dim=D, frames=F, model_hash="m1")


def corpus(n: int, seed: int = 0, clustered: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Random videos with padded frames; `clustered`: frames near their video's centre, as real video is."""
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.standard_normal((n, 1, D)) * 3
        frames = (centres + 0.5 * rng.standard_normal((n, F, D))).astype(np.float16)
    else:
        frames = rng.standard_normal((n, F, D)).astype(np.float16)
    mask = np.arange(F)[None] < rng.integers(1, F + 1, n)[:, None]
    frames[~mask] = 0
    return [f"v{seed}-{i:04d}" for i in range(n)], frames, mask


def index_vectors(
    frames: np.ndarray, mask: np.ndarray, vectors: str, segments: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """What each video is in the index, written out plainly: [Nv, n, D] and which are real [Nv, n]."""
    x = frames.astype(np.float32)
    if vectors == "frames":
        return x, mask
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    if vectors == "cosine":
        return unit.astype(np.float16).astype(np.float32), mask  # FAISS keeps them as fp16
    out = np.zeros((len(x), segments, x.shape[-1]), np.float32)
    real = np.zeros((len(x), segments), bool)
    for v in range(len(x)):  # runs of real frames cut at the S - 1 lowest neighbour cosines
        kept = unit[v][mask[v]]
        neighbours = [float(kept[t] @ kept[t + 1]) for t in range(len(kept) - 1)]
        cuts = sorted(sorted(range(len(neighbours)), key=neighbours.__getitem__)[: segments - 1])
        edges = [0, *[t + 1 for t in cuts], len(kept)]
        for j, (start, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            part = kept[start:end]
            if len(part):
                out[v, j], real[v, j] = part.mean(0) / np.linalg.norm(part.mean(0)), True
    return out.astype(np.float16).astype(np.float32), real


def brute_force(
    queries: np.ndarray, ids: list[str], frames: np.ndarray, mask: np.ndarray, k: int, vectors: str = "frames"
):
    """Best index vector's inner product with the query, the definition the index must reproduce."""
    x, real = index_vectors(frames, mask, vectors)
    scores = np.einsum("qd,nfd->qnf", queries, x)  # [Nq, Nv, n]
    scores[:, ~real] = -np.inf
    best = scores.max(-1)  # [Nq, Nv]
    order = np.argsort(-best, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(best, order, 1)


def feature_store(path, ids, frames, mask) -> LocalStore:
    store = LocalStore.create(path, MANIFEST)
    store.put_many(ids, frames, mask, np.tile(np.arange(F, dtype=np.float32), (len(ids), 1)))
    return store


@pytest.mark.parametrize(("shards", "vectors"), [(1, "frames"), (3, "frames"), (3, "cosine"), (2, "segments")])
def test_sharded_flat_search_equals_brute_force(tmp_path, shards, vectors):
    ids, frames, mask = corpus(400)
    store = feature_store(tmp_path / "f", ids, frames, mask)
    params = IndexParams(kind="flat", shards=shards, vectors=vectors, segments=2)
    build_shards(store, ids, tmp_path, params, batch_size=64)
    base = FrameIndex.load(tmp_path, params)
    vectors_per_video = np.minimum(mask.sum(1), 2) if vectors == "segments" else mask.sum(1)
    assert sum(base.sizes()) == int(vectors_per_video.sum()) and len(base.sizes()) == shards
    # overfetch=1 makes the first fetch too small for many queries: the refetch must fix it.
    index = CandidateIndex(base, ids, D, exact=True, overfetch=1, vectors=vectors, segments=2)
    queries = np.random.default_rng(1).standard_normal((20, D)).astype(np.float32)
    for k in (1, 7, 50):
        got = index.search(queries, k)
        want_ids, want_scores = brute_force(queries, ids, frames, mask, k, vectors)
        for (g_ids, g_scores), w_ids, w_scores in zip(got, want_ids, want_scores, strict=True):
            np.testing.assert_allclose(g_scores, w_scores, rtol=1e-4, atol=1e-3)
            assert g_ids == w_ids or np.allclose(np.sort(g_scores), np.sort(w_scores))  # ties may swap
            assert len(set(g_ids)) == k  # distinct videos
    assert [len(r[0]) for r in index.search(queries[:2], 1000)] == [400, 400]  # k beyond the corpus


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_have_good_recall(tmp_path, kind):
    ids, frames, mask = corpus(1500, clustered=True)
    store = feature_store(tmp_path / "f", ids, frames, mask)
    params = IndexParams(kind=kind, shards=2, nlist=16, nprobe=4, hnsw_m=16, ef_search=64)
    build_shards(store, ids, tmp_path, params)
    index = CandidateIndex(FrameIndex.load(tmp_path, params), ids, D, exact=False, vectors=params.vectors)
    rng = np.random.default_rng(2)
    queries = (frames[rng.choice(1500, 30)].astype(np.float32).mean(1) + rng.standard_normal((30, D))).astype(
        np.float32
    )
    want, _ = brute_force(queries, ids, frames, mask, 10, params.vectors)
    got = index.search(queries, 10)
    recall = np.mean([len(set(g[0]) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.8, recall
    assert all(len(g[0]) == 10 for g in got)


def _mapped_files() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_shards_are_opened_memory_mapped(tmp_path, kind):
    ids, frames, mask = corpus(300, clustered=True)
    store = feature_store(tmp_path / "f", ids, frames, mask)
    params = IndexParams(kind=kind, nlist=4, hnsw_m=8)
    build_shards(store, ids, tmp_path, params)
    shard = str((tmp_path / "shard-000.faiss").resolve())
    query = np.ones((2, D), np.float32)
    copied = FrameIndex.load(tmp_path, params, mmap=False)
    assert shard not in _mapped_files()
    mapped = FrameIndex.load(tmp_path, params, mmap=True)
    assert shard in _mapped_files()  # codes read from the page cache, not copied into the heap
    for (s1, l1, _), (s2, l2, _) in zip(mapped.search(query, 10), copied.search(query, 10), strict=True):
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(s1, s2)


@pytest.fixture(params=["local", "redis"])
def catalog_dir(request, tmp_path, redis_prefix):
    ids, frames, mask = corpus(300)
    source = feature_store(tmp_path / "features", ids, frames, mask)
    if request.param == "local":
        spec = StoreSpec()
    else:
        spec = StoreSpec(backend="redis", url=request.getfixturevalue("redis_server").url, prefix=redis_prefix)
    build_catalog(source, tmp_path / "index", IndexParams(kind="flat", shards=2), spec)
    source.close()
    return tmp_path / "index", (ids, frames, mask)


def test_catalog_changes_reach_search_and_frames_and_survive_reopen(catalog_dir):
    index_dir, (ids, frames, mask) = catalog_dir
    query = np.random.default_rng(5).standard_normal((1, D)).astype(np.float32)
    with Catalog.open(index_dir, expected=MANIFEST) as catalog:
        assert len(catalog) == 300
        top = catalog.search_candidates(query, 3)[0][0]
        assert top == brute_force(query, ids, frames, mask, 3, "cosine")[0][0]
        assert catalog.delete_video(top[0]) is True and catalog.delete_video(top[0]) is False
        assert catalog.search_candidates(query, 1)[0][0] == [top[1]]
        with pytest.raises(KeyError, match=top[0]):
            catalog.get_frames([top[0]])
        # A new video aligned with the query wins; replacing it with its opposite sinks it.
        catalog.put_video("new", np.tile(query * 10, (F, 1)), np.ones(F, bool), np.arange(F))
        assert catalog.search_candidates(query, 1)[0][0] == ["new"]
        catalog.put_video(top[1], np.tile(-query, (F, 1)), np.ones(F, bool), np.arange(F))
        result = catalog.search_candidates(query, 300)[0][0]
        assert result[-1] == top[1] and top[0] not in result and len(catalog) == 300
        np.testing.assert_array_equal(
            catalog.get_frames(["new"]).frames[0], np.tile(query * 10, (F, 1)).astype(np.float16)
        )
    with Catalog.open(index_dir, expected=MANIFEST) as again:
        assert len(again) == 300 and top[0] not in again
        assert again.search_candidates(query, 1)[0][0] == ["new"]
        assert again.search_candidates(query, 300)[0][0][-1] == top[1]
        assert again.candidates.stats()["tombstones"] == 2
        again.compact()
        assert again.candidates.stats() == {"videos": 300, "base_videos": 300, "tombstones": 0, "delta_vectors": 0}
        assert again.search_candidates(query, 1)[0][0] == ["new"]
    with Catalog.open(index_dir) as compacted:
        assert compacted.search_candidates(query, 300)[0][0][-1] == top[1] and len(compacted) == 300


def test_hnsw_deletes_are_filtered_after_reopen(tmp_path):
    ids, frames, mask = corpus(200, clustered=True)
    source = feature_store(tmp_path / "f", ids, frames, mask)
    build_catalog(source, tmp_path / "idx", IndexParams(kind="hnsw", hnsw_m=8), StoreSpec())
    query = frames[7].astype(np.float32).mean(0, keepdims=True)
    with Catalog.open(tmp_path / "idx") as catalog:
        assert catalog.search_candidates(query, 1)[0][0] == [ids[7]]
        catalog.delete_video(ids[7])
    with Catalog.open(tmp_path / "idx") as catalog:
        found = catalog.search_candidates(query, 20)[0][0]
        assert ids[7] not in found and len(found) == 20


def test_a_shard_add_that_fails_in_its_thread_fails_the_build(tmp_path):
    """A batch's shard adds run in the builder's threads while the next batch is read: a failure
    there comes back at the next add or at the write, never lost with a shard missing videos."""
    ids, frames, mask = corpus(40)
    builder = ShardBuilder(D, IndexParams(shards=2))

    class FullDisk:
        def add_with_ids(self, vectors, labels):
            raise OSError("no space left on device")

    builder.shards[1] = FullDisk()
    batch = FrameBatch(frames[:20], mask[:20], np.zeros(mask[:20].shape, np.float32))
    builder.add(np.arange(20), batch)  # queued: the failure is not known yet
    with pytest.raises(OSError, match="no space left"):
        builder.write(tmp_path)
    assert not list(tmp_path.glob("shard-*"))  # nothing written
    builder.pool.shutdown()


def test_a_build_that_dies_half_way_leaves_the_previous_index(tmp_path, monkeypatch):
    ids, frames, mask = corpus(120)
    first = feature_store(tmp_path / "f1", ids, frames, mask)
    build_catalog(first, tmp_path / "idx", IndexParams(), StoreSpec())
    info_before = json.loads((tmp_path / "idx" / "index.json").read_text())
    new_ids, new_frames, new_mask = corpus(120, seed=1)
    second = feature_store(tmp_path / "f2", new_ids, new_frames, new_mask)
    calls = {"n": 0}
    real_add = ShardBuilder.add

    def dying_add(self, vnums, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_add(self, vnums, batch)

    monkeypatch.setattr(index_module.ShardBuilder, "add", dying_add)
    with pytest.raises(RuntimeError, match="killed"):
        build_catalog(second, tmp_path / "idx", IndexParams(), StoreSpec(), batch_size=32)
    assert json.loads((tmp_path / "idx" / "index.json").read_text()) == info_before
    assert not list((tmp_path / "idx").glob(".tmp-gen-*"))
    query = np.ones((1, D), np.float32)
    with Catalog.open(tmp_path / "idx") as catalog:
        assert set(catalog.ids()) == set(ids)
        assert catalog.search_candidates(query, 2)[0][0] == brute_force(query, ids, frames, mask, 2, "cosine")[0][0]
    monkeypatch.setattr(index_module.ShardBuilder, "add", real_add)
    build_catalog(second, tmp_path / "idx", IndexParams(), StoreSpec())
    with Catalog.open(tmp_path / "idx") as catalog:
        assert set(catalog.ids()) == set(new_ids) and catalog.info.generation == "gen-000002"


def test_catalog_refuses_another_model_naming_the_fields(tmp_path):
    ids, frames, mask = corpus(10)
    build_catalog(feature_store(tmp_path / "f", ids, frames, mask), tmp_path / "idx", IndexParams(), StoreSpec())
    other = StoreManifest(dim=D, frames=12, model_hash="m2")
    with pytest.raises(StoreMismatch) as info:
        Catalog.open(tmp_path / "idx", expected=other)
    assert "frames: 5" in str(info.value) and "model_hash: 'm1'" in str(info.value) and "dim" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="glccl index build"):
        Catalog.open(tmp_path / "empty")


def test_redis_build_refuses_a_prefix_holding_another_model(tmp_path, redis_server, redis_prefix):
    RedisStore.connect(
        redis_server.url, redis_prefix, manifest=StoreManifest(dim=D, frames=F, model_hash="old")
    ).close()
    ids, frames, mask = corpus(10)
    spec = StoreSpec(backend="redis", url=redis_server.url, prefix=redis_prefix)
    with pytest.raises(StoreMismatch, match="model_hash: 'old'"):
        build_catalog(feature_store(tmp_path / "f", ids, frames, mask), tmp_path / "idx", IndexParams(), spec)
    assert not (tmp_path / "idx" / "index.json").exists()


def test_catalog_on_redis_cluster(tmp_path, redis_cluster, redis_prefix):
    ids, frames, mask = corpus(80)
    spec = StoreSpec(backend="redis", url=redis_cluster.url, prefix=redis_prefix, cluster=True)
    build_catalog(
        feature_store(tmp_path / "f", ids, frames, mask), tmp_path / "idx", IndexParams(kind="flat", shards=2), spec
    )
    query = np.random.default_rng(3).standard_normal((2, D)).astype(np.float32)
    with Catalog.open(tmp_path / "idx", expected=MANIFEST) as catalog:
        got = catalog.search_candidates(query, 5)
        assert [g[0] for g in got] == brute_force(query, ids, frames, mask, 5, "cosine")[0]
        batch = catalog.get_frames(got[0][0])
        assert isinstance(batch, FrameBatch) and batch.frames.shape == (5, F, D)
        catalog.delete_video(got[0][0][0])
    with Catalog.open(tmp_path / "idx") as catalog:
        assert got[0][0][0] not in catalog and len(catalog.store) == 79


def test_one_writer_and_readers_that_refresh(tmp_path):
    ids, frames, mask = corpus(50)
    build_catalog(feature_store(tmp_path / "f", ids, frames, mask), tmp_path / "idx", IndexParams(), StoreSpec())
    query = np.ones((1, D), np.float32)
    with Catalog.open(tmp_path / "idx") as writer, Catalog.open(tmp_path / "idx") as reader:
        writer.put_video("fresh", np.tile(query * 50, (F, 1)), np.ones(F, bool), np.arange(F))
        writer.delete_video(ids[3])
        assert "fresh" not in reader and ids[3] in reader
        reader.refresh()
        assert reader.search_candidates(query, 1)[0][0] == ["fresh"] and ids[3] not in reader
        np.testing.assert_array_equal(reader.get_frames(["fresh"]).frames, writer.get_frames(["fresh"]).frames)
        with pytest.raises(OSError, match="another process"):
            reader.put_video("other", np.zeros((F, D)), np.ones(F, bool), np.arange(F))
        assert "other" not in reader.store


def test_a_delete_interrupted_before_the_store_is_finished_by_the_next_writer(tmp_path, monkeypatch):
    ids, frames, mask = corpus(20)
    build_catalog(feature_store(tmp_path / "f", ids, frames, mask), tmp_path / "idx", IndexParams(), StoreSpec())
    with Catalog.open(tmp_path / "idx") as catalog:
        monkeypatch.setattr(catalog.store, "delete", lambda video_id: (_ for _ in ()).throw(RuntimeError("crash")))
        with pytest.raises(RuntimeError, match="crash"):
            catalog.delete_video(ids[0])  # logged, never reached the store
    monkeypatch.undo()
    with Catalog.open(tmp_path / "idx") as catalog:
        assert ids[0] not in catalog and ids[0] in catalog.store  # the log wins for search at once
        catalog.put_video("x", frames[1], mask[1], np.arange(F))  # the first write repairs the store
        assert ids[0] not in catalog.store and len(catalog.store) == len(catalog) == 20
