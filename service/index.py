"""Stage 1 of the two-stage search (DESIGN.md §3): candidate videos from FAISS over frame vectors.

Every real frame of every video is one vector, labelled with its video's number. The query is the
sentence feature `s`; a video's candidate score is the max over its frames of `s . V_t`, which
bounds GLIM's softmax-pooled `s . vbar` from above (a convex combination never exceeds its largest
term), so a video that scores well under GLIM cannot hide behind a low candidate score.

Vectors are kept as fp16 (`ScalarQuantizer QT_fp16`): the stored features are fp16 already, so
this loses nothing against them, halves memory against float32 and scans faster. Kinds:

- flat: exhaustive inner product, exact;
- ivf: inverted lists (`nlist` per shard, `nprobe` probed), approximate;
- hnsw: graph search (`M`, `efSearch`), approximate.

The base shards are built once and opened read-only and memory-mapped; changes after the build
go to a small in-memory exact `delta` index plus a set of tombstoned base videos (a deleted or
replaced video's base vectors stay in the shard and are filtered out of results). This works the
same for every kind, HNSW included, which cannot remove vectors; a rebuild folds the delta in.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from service.stores.base import FrameBatch, FrameStore

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
CODES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
# Zero-copy memory map of the codes (faiss >= 1.9); plain IO_FLAG_MMAP on older versions.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
TRAIN_PER_LIST = 40  # k-means training vectors per IVF list (faiss warns below 39)


@dataclass(frozen=True)
class IndexParams:
    kind: str = "flat"  # flat | ivf | hnsw
    shards: int = 1  # FAISS shards, searched in parallel threads and merged
    nlist: int = 0  # IVF lists per shard; 0 picks ~2 sqrt(vectors per shard), cheap to train
    nprobe: int = 32  # IVF lists probed per query
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 80  # HNSW build-time beam
    ef_search: int = 128  # HNSW search-time beam (raised to the fetch size when that is larger)
    codes: str = "fp16"  # IVF list entries: fp16 (as stored) or sq8 (8-bit scalar quantised, half the memory)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.codes not in CODES:
            raise ValueError(f"unknown index codes {self.codes!r}; expected one of {', '.join(CODES)}")
        for name in ("shards", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index parameter {name} must be at least 1")
        if self.nlist < 0:
            raise ValueError("index parameter nlist must be 0 (automatic) or positive")

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexParams:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def default_nlist(vectors_per_shard: int) -> int:
    """2 sqrt(N) lists: k-means cost grows with nlist^2, and 2 sqrt(N) keeps a 100k-video build
    (1.2M vectors) to well under a minute on two cores, at the low end of FAISS's 4-16 sqrt(N)."""
    return max(1, int(2 * np.sqrt(vectors_per_shard)))


def shard_file(shard: int) -> str:
    return f"shard-{shard:03d}.faiss"


def frame_vectors(vnums: np.ndarray, batch: FrameBatch) -> tuple[np.ndarray, np.ndarray]:
    """Real frames as float32 vectors [m, D] and their video numbers [m]."""
    vectors = np.ascontiguousarray(batch.frames[batch.mask], dtype=np.float32)  # [m, D]
    labels = np.repeat(np.asarray(vnums, dtype=np.int64), batch.mask.sum(axis=1))  # [m]
    return vectors, labels


def _flat_fp16(dim: int) -> faiss.Index:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def new_delta(dim: int) -> faiss.Index:
    """An exact, removable index for videos added after the build (labels = video numbers)."""
    return faiss.IndexIDMap(_flat_fp16(dim))


class ShardBuilder:
    """Empty shards of the chosen kind; `add` routes each video to shard `vnum % shards`."""

    def __init__(self, dim: int, params: IndexParams, train: np.ndarray | None = None, vectors_hint: int = 0) -> None:
        self.dim, self.params = dim, params
        self.nlist = 0
        if params.kind == "flat":
            self.shards = [faiss.IndexIDMap(_flat_fp16(dim)) for _ in range(params.shards)]
        elif params.kind == "hnsw":
            self.shards = []
            for _ in range(params.shards):
                graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                graph.hnsw.efConstruction = params.ef_construction
                self.shards.append(faiss.IndexIDMap(graph))
        else:
            if train is None or len(train) == 0:
                raise ValueError("an IVF index needs training vectors; the store is empty")
            per_shard = max(1, vectors_hint // params.shards)
            nlist = params.nlist or max(1, default_nlist(per_shard))
            self.nlist = max(1, min(nlist, len(train) // TRAIN_PER_LIST or 1))
            if self.nlist < nlist:
                log.warning("IVF: %d training vectors allow %d lists, not %d", len(train), self.nlist, nlist)
            ivf = faiss.IndexIVFScalarQuantizer(
                faiss.IndexFlatIP(dim),
                dim,
                self.nlist,
                CODES[params.codes],
                faiss.METRIC_INNER_PRODUCT,
                False,
            )  # by_residual=False: list entries hold the (quantised) vectors themselves
            ivf.train(np.ascontiguousarray(train, dtype=np.float32))
            # One k-means for all shards: each shard partitions its vectors by the same centroids.
            self.shards = [faiss.clone_index(ivf) for _ in range(params.shards)]
        self.pool = ThreadPoolExecutor(max_workers=params.shards) if params.shards > 1 else None

    def add(self, vnums: np.ndarray, batch: FrameBatch) -> int:
        vectors, labels = frame_vectors(vnums, batch)
        owner = labels % len(self.shards)

        def add_one(shard: int) -> None:
            sel = owner == shard
            if sel.any():
                self.shards[shard].add_with_ids(vectors[sel], labels[sel])

        if self.pool is None:
            add_one(0)
        else:
            list(self.pool.map(add_one, range(len(self.shards))))
        return len(vectors)

    def write(self, directory: Path) -> None:
        for number, index in enumerate(self.shards):
            faiss.write_index(index, str(Path(directory) / shard_file(number)))
        if self.pool is not None:
            self.pool.shutdown()


def training_sample(store: FrameStore, ids: Sequence[str], vectors: int, seed: int = 0) -> np.ndarray:
    """About `vectors` frame vectors from videos drawn at random (not the first ones: order is biased)."""
    if not ids or vectors <= 0:
        return np.zeros((0, store.manifest.dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    take = min(len(ids), max(1, int(1.3 * vectors / store.manifest.frames)))  # 1.3: padded frames are not vectors
    chosen = [ids[i] for i in np.sort(rng.choice(len(ids), size=take, replace=False))]
    parts = [frame_vectors(np.zeros(len(c), np.int64), b)[0] for c, b in store.iter_batches(1024, chosen)]
    return np.concatenate(parts)


def build_shards(
    store: FrameStore,
    ids: Sequence[str],
    directory: Path,
    params: IndexParams,
    batch_size: int = 512,
    on_batch: Callable[[list[str], FrameBatch], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Writes the shards for `ids` (video number = position in `ids`) into `directory`.

    `on_batch` sees every batch read from the store (the catalog build copies them to the
    target store in the same pass).
    """
    ids = list(ids)
    train = None
    hint = len(ids) * store.manifest.frames
    if params.kind == "ivf":
        per_shard = max(1, hint // params.shards)
        want = params.nlist or max(1, default_nlist(per_shard))
        train = training_sample(store, ids, want * TRAIN_PER_LIST)
    builder = ShardBuilder(store.manifest.dim, params, train, vectors_hint=hint)
    vectors = 0
    with tqdm(total=len(ids), desc=f"index ({params.kind})", unit="video", disable=not progress) as bar:
        for start, (chunk, batch) in zip(
            range(0, len(ids), batch_size), store.iter_batches(batch_size, ids), strict=True
        ):
            if on_batch is not None:
                on_batch(chunk, batch)
            vectors += builder.add(np.arange(start, start + len(chunk)), batch)
            bar.update(len(chunk))
    builder.write(Path(directory))
    return {"videos": len(ids), "vectors": vectors, "nlist": builder.nlist}


class FrameIndex:
    """The base shards, read-only; `search` queries every shard in parallel."""

    def __init__(self, shards: list[faiss.Index], params: IndexParams) -> None:
        self.shards = shards
        self.params = params
        for index in shards:
            inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
            if params.kind == "ivf":
                faiss.extract_index_ivf(index).nprobe = params.nprobe
            elif params.kind == "hnsw":
                inner.hnsw.efSearch = params.ef_search
        self.pool = ThreadPoolExecutor(max_workers=len(shards)) if len(shards) > 1 else None

    @classmethod
    def load(cls, directory: Path, params: IndexParams, mmap: bool = True) -> FrameIndex:
        shards = []
        for number in range(params.shards):
            path = Path(directory) / shard_file(number)
            if not path.is_file():
                raise FileNotFoundError(f"index shard {path} is missing")
            shards.append(faiss.read_index(str(path), MMAP_FLAGS if mmap else 0))
        return cls(shards, params)

    def sizes(self) -> list[int]:
        return [int(s.ntotal) for s in self.shards]

    def search(self, queries: np.ndarray, fetch: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per shard (scores [Nq, kk], labels [Nq, kk], kk) with kk = min(fetch, shard size)."""

        def one(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, int]:
            kk = min(fetch, int(index.ntotal))
            if kk == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), 0
            scores, labels = index.search(queries, kk)
            return scores, labels, kk

        if self.pool is None:
            return [one(s) for s in self.shards]
        return list(self.pool.map(one, self.shards))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.shards = []


class CandidateIndex:
    """Base shards + the delta of later changes + tombstones; ids in, ids out. Thread-safe.

    Video numbers: 0..n-1 for the base videos (their position in the build's id list), then
    increasing numbers for every later add, so a replaced video never reuses a number.
    """

    def __init__(
        self, base: FrameIndex | None, base_ids: Sequence[str], dim: int, exact: bool = True, overfetch: int = 4
    ) -> None:
        if overfetch < 1:
            raise ValueError("overfetch must be at least 1")
        self.base = base
        self.dim = dim
        self.exact = exact
        self.overfetch = overfetch  # frames fetched per wanted video on the first try
        self._base_count = len(base_ids)
        self._id_of: dict[int, str] = dict(enumerate(base_ids))
        self._vnum: dict[str, int] = {video_id: n for n, video_id in self._id_of.items()}
        if len(self._vnum) != len(base_ids):
            raise ValueError("the index's id list holds duplicates")
        self._tombstones: set[int] = set()
        self._tomb_array = np.zeros(0, np.int64)
        self._delta = new_delta(dim)
        self._next = len(base_ids)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vnum)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._vnum

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._vnum)

    def stats(self) -> dict[str, int]:
        return {
            "videos": len(self._vnum),
            "base_videos": self._base_count,
            "tombstones": len(self._tombstones),
            "delta_vectors": int(self._delta.ntotal),
        }

    def _drop(self, video_id: str) -> bool:
        vnum = self._vnum.pop(video_id, None)
        if vnum is None:
            return False
        del self._id_of[vnum]
        if vnum < self._base_count:
            self._tombstones.add(vnum)  # base shards are read-only: filter at search time
            self._tomb_array = np.fromiter(self._tombstones, np.int64, len(self._tombstones))
        else:
            self._delta.remove_ids(np.array([vnum], dtype=np.int64))
        return True

    def add_many(self, ids: Sequence[str], batch: FrameBatch) -> None:
        """Adds or replaces videos (ids unique within the call)."""
        if len(set(ids)) != len(ids):
            raise ValueError("add_many needs distinct ids")
        with self._lock:
            for video_id in ids:
                self._drop(video_id)
            vnums = np.arange(self._next, self._next + len(ids), dtype=np.int64)
            self._next += len(ids)
            vectors, labels = frame_vectors(vnums, batch)
            if len(vectors):
                self._delta.add_with_ids(vectors, labels)
            for video_id, vnum in zip(ids, vnums.tolist(), strict=True):
                self._vnum[video_id] = vnum
                self._id_of[vnum] = video_id

    def remove(self, video_id: str) -> bool:
        with self._lock:
            return self._drop(video_id)

    def search(self, queries: np.ndarray, k: int) -> list[tuple[list[str], np.ndarray]]:
        """For each query [Nq, D]: the k best videos by max-over-frames inner product, best first.

        Each source (shard or delta) is asked for `k * overfetch` frames; a query is asked again
        with 4x the fetch while it has fewer than k distinct videos, or (exact kinds) while an
        unfetched frame of some source could still beat its k-th video. So flat results equal
        brute force whatever the over-fetch.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Nq, {self.dim}], got {list(queries.shape)}")
        if k < 1:
            raise ValueError("k must be at least 1")
        results: list[tuple[list[str], np.ndarray]] = [([], np.zeros(0, np.float32))] * len(queries)
        todo = np.arange(len(queries))
        fetch = max(k * self.overfetch, 16)
        while todo.size and len(self._vnum):
            sub = np.ascontiguousarray(queries[todo])
            parts = self.base.search(sub, fetch) if self.base is not None else []
            exact = [self.exact] * len(parts)
            sizes = self.base.sizes() if self.base is not None else []
            with self._lock:  # the delta and the id maps must not change under the merge
                kk = min(fetch, int(self._delta.ntotal))
                if kk:
                    parts.append((*self._delta.search(sub, kk), kk))
                    exact.append(True)
                    sizes.append(int(self._delta.ntotal))
                again = []
                for row, q in enumerate(todo.tolist()):
                    ids, scores, more = self._merge(parts, exact, sizes, row, k)
                    results[q] = (ids, scores)
                    if more:
                        again.append(q)
            if not again or fetch >= max(sizes, default=0):
                break
            todo, fetch = np.asarray(again), fetch * 4
        return results

    def _merge(
        self, parts: list[tuple[np.ndarray, np.ndarray, int]], exact: list[bool], sizes: list[int], row: int, k: int
    ) -> tuple[list[str], np.ndarray, bool]:
        scores = np.concatenate([p[0][row] for p in parts])  # [sum kk]
        labels = np.concatenate([p[1][row] for p in parts])
        keep = labels >= 0
        if self._tomb_array.size:
            keep &= ~np.isin(labels, self._tomb_array)
        scores, labels = scores[keep], labels[keep]
        order = np.argsort(-scores, kind="stable")
        scores, labels = scores[order], labels[order]
        _, first = np.unique(labels, return_index=True)  # a video's first hit is its max frame
        first.sort()
        top = first[:k]
        ids = [self._id_of[v] for v in labels[top].tolist()]
        top_scores = scores[top].astype(np.float32)
        # A source that returned all it was asked for (and holds more) may hide better frames;
        # an exact source's last score bounds them, an approximate one gives no bound.
        full = [
            (p, ex) for p, ex, size in zip(parts, exact, sizes, strict=True) if 0 < p[2] < size and p[1][row, -1] >= 0
        ]
        if len(ids) < k:
            more = bool(full)
        else:
            bounds = [float(p[0][row, -1]) for p, ex in full if ex]
            more = bool(bounds) and max(bounds) > float(top_scores[-1])
        return ids, top_scores, more
