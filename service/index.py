"""Stage 1 of the two-stage search (docs/design.md §3): candidate videos from FAISS.

What a video becomes in the index (`IndexParams.vectors`), each vector labelled with its video's
number; the query is the sentence feature `s`, and a video's candidate score is its best vector's
inner product with `s`:
- cosine (default): every real frame, L2-normalised: the best frame by cosine. Raw frames favour
  high-norm (noisy) frames; the engine re-scores a wide pool of these candidates exactly anyway.
- segments: up to `segments` vectors per video (default 4), each the normalised mean of a run of
  consecutive normalised frames, cut where neighbouring frames differ most: F / segments times
  fewer vectors, so a million videos build in minutes on two cores; a coarser pool that a wider
  exact re-score makes up for. (One segment, the mean of the whole video, loses events that last
  a few frames: at 10,000 videos it kept ~60% of the full-score top 10 in a 1,000-video pool;
  four even runs of three frames, 90%.)
- frames: every real frame as stored (indexes built before this setting): max_t s . V_t bounds
  GLIM's softmax-pooled s . vbar from above.

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
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from service.stores.base import FrameBatch, FrameStore

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
VECTORS = ("frames", "cosine", "segments")
CODES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
# Zero-copy memory map of the codes (faiss >= 1.9); plain IO_FLAG_MMAP on older versions.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
TRAIN_PER_LIST = 40  # k-means training vectors per IVF list (faiss warns below 39)
TRAIN_RUN = 256  # training videos are drawn in runs of this many consecutive ones


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
    vectors: str = "cosine"  # what is indexed: frames (raw), cosine (normalised frames), segments (see below)
    segments: int = 4  # vectors="segments": vectors per video, each the mean of a run of consecutive frames

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.codes not in CODES:
            raise ValueError(f"unknown index codes {self.codes!r}; expected one of {', '.join(CODES)}")
        if self.vectors not in VECTORS:
            raise ValueError(f"unknown index vectors {self.vectors!r}; expected one of {', '.join(VECTORS)}")
        for name in ("shards", "nprobe", "hnsw_m", "ef_construction", "ef_search", "segments"):
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
        # indexes written before `vectors` existed hold raw frames
        return cls(**{"vectors": "frames", **{k: v for k, v in data.items() if k in known}})


def default_nlist(vectors_per_shard: int) -> int:
    """2 sqrt(N) lists: k-means cost grows with nlist^2, and 2 sqrt(N) keeps a 100k-video build
    (1.2M vectors) to well under a minute on two cores, at the low end of FAISS's 4-16 sqrt(N)."""
    return max(1, int(2 * np.sqrt(vectors_per_shard)))


def shard_file(shard: int) -> str:
    return f"shard-{shard:03d}.faiss"


def segment_weights(unit: np.ndarray, mask: np.ndarray, segments: int) -> np.ndarray:
    """[n, S, F] 0/1: each video's real frames cut into at most S runs of consecutive frames, at the
    S - 1 largest changes (lowest cosine between neighbouring normalised frames `unit` [n, F, D]),
    so that a run stays within one shot or event where the video has few."""
    real_pair = mask[:, 1:] & mask[:, :-1]  # [n, F-1]
    similarity = np.where(real_pair, (unit[:, 1:] * unit[:, :-1]).sum(-1), np.inf)
    rank = similarity.argsort(axis=1, kind="stable").argsort(axis=1, kind="stable")
    cut = (rank < segments - 1) & real_pair  # [n, F-1]
    which = np.concatenate([np.zeros((len(mask), 1), np.int64), np.cumsum(cut, axis=1)], axis=1)  # [n, F]
    return ((which[:, None, :] == np.arange(segments)[None, :, None]) & mask[:, None, :]).astype(np.float32)


def frame_vectors(
    vnums: np.ndarray, batch: FrameBatch, vectors: str = "frames", segments: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The index's float32 vectors [m, D] for a batch, and their video numbers [m].

    frames: every real frame as stored; cosine: every real frame L2-normalised; segments: per
    video, up to `segments` runs of consecutive real frames cut where neighbours differ most, each
    the normalised mean of its normalised frames (F / segments times fewer vectors).
    """
    frames = batch.frames.astype(np.float32)  # [n, F, D]
    vnums = np.asarray(vnums, dtype=np.int64)
    if vectors == "frames":
        return np.ascontiguousarray(frames[batch.mask]), np.repeat(vnums, batch.mask.sum(axis=1))
    frames /= np.maximum(np.linalg.norm(frames, axis=-1, keepdims=True), 1e-12)
    if vectors == "cosine":
        return np.ascontiguousarray(frames[batch.mask]), np.repeat(vnums, batch.mask.sum(axis=1))
    weights = segment_weights(frames, batch.mask, segments)  # [n, S, F]
    sums = np.matmul(weights, frames)  # [n, S, D]
    real = weights.sum(axis=2) > 0  # [n, S]
    out = sums[real]
    out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out), np.repeat(vnums, real.sum(axis=1))


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
        # One thread per shard; the adds of a batch run while the caller reads and converts the next
        # one (FAISS releases the GIL): at a million videos the reading and the IVF assignment each
        # take minutes, and overlapping them uses the core a single-threaded read leaves idle.
        self.pool = ThreadPoolExecutor(max_workers=params.shards)
        self._pending: list[Future[None]] = []

    def add(self, vnums: np.ndarray, batch: FrameBatch) -> int:
        """Queues the batch's vectors for their shards (after the previous batch's adds are done)."""
        vectors, labels = frame_vectors(vnums, batch, self.params.vectors, self.params.segments)
        owner = labels % len(self.shards)
        self.wait()

        def add_one(shard: int) -> None:
            sel = owner == shard
            if sel.any():
                self.shards[shard].add_with_ids(vectors[sel], labels[sel])

        self._pending = [self.pool.submit(add_one, shard) for shard in range(len(self.shards))]
        return len(vectors)

    def wait(self) -> None:
        """Blocks until every queued add is done; re-raises the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def write(self, directory: Path) -> None:
        self.wait()
        for number, index in enumerate(self.shards):
            faiss.write_index(index, str(Path(directory) / shard_file(number)))


def training_sample(
    store: FrameStore, ids: Sequence[str], vectors: int, seed: int = 0, kind: str = "frames", segments: int = 4
) -> np.ndarray:
    """About `vectors` index vectors from videos drawn at random (not the first ones: order is biased),
    in runs of `TRAIN_RUN` consecutive videos: stores read neighbours together (a memory-mapped
    shard's pages, a generated corpus's chunks), so a sample of a large corpus does not touch all of it."""
    if not ids or vectors <= 0:
        return np.zeros((0, store.manifest.dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    per_video = min(segments, store.manifest.frames) if kind == "segments" else store.manifest.frames
    take = min(len(ids), max(1, int(1.3 * vectors / per_video)))  # 1.3: padded frames are not vectors
    runs = -(-len(ids) // TRAIN_RUN)
    picked = np.sort(rng.choice(runs, size=min(runs, -(-take // TRAIN_RUN)), replace=False))
    positions = (picked[:, None] * TRAIN_RUN + np.arange(TRAIN_RUN)[None]).ravel()
    chosen = [ids[i] for i in positions[positions < len(ids)].tolist()]
    parts = [
        frame_vectors(np.zeros(len(c), np.int64), b, kind, segments)[0] for c, b in store.iter_batches(1024, chosen)
    ]
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
    hint = len(ids) * (
        min(params.segments, store.manifest.frames) if params.vectors == "segments" else store.manifest.frames
    )
    if params.kind == "ivf":
        per_shard = max(1, hint // params.shards)
        want = params.nlist or max(1, default_nlist(per_shard))
        train = training_sample(store, ids, want * TRAIN_PER_LIST, kind=params.vectors, segments=params.segments)
    builder = ShardBuilder(store.manifest.dim, params, train, vectors_hint=hint)
    vectors = 0
    try:
        with tqdm(total=len(ids), desc=f"index ({params.kind})", unit="video", disable=not progress) as bar:
            for start, (chunk, batch) in zip(
                range(0, len(ids), batch_size), store.iter_batches(batch_size, ids), strict=True
            ):
                if on_batch is not None:
                    on_batch(chunk, batch)
                vectors += builder.add(np.arange(start, start + len(chunk)), batch)
                bar.update(len(chunk))
        builder.write(Path(directory))
    finally:
        builder.pool.shutdown(wait=True)  # also when it failed: no add left running into a removed folder
    return {"videos": len(ids), "vectors": vectors, "nlist": builder.nlist}


def search_params(params: IndexParams, selector: faiss.IDSelector, share: float = 1.0) -> faiss.SearchParameters:
    """FAISS search parameters that restrict a search to `selector`'s labels, for this index kind."""
    if params.kind == "ivf":
        out = faiss.SearchParametersIVF()
        out.nprobe = max(1, min(params.nlist or params.nprobe, math.ceil(params.nprobe / max(share, 1e-9))))
    elif params.kind == "hnsw":
        out = faiss.SearchParametersHNSW()
        out.efSearch = params.ef_search
    else:
        out = faiss.SearchParameters()
    out.sel = selector
    return out


def label_selector(labels: np.ndarray, size: int) -> tuple[faiss.IDSelector, np.ndarray]:
    """A selector of `labels` (video numbers below `size`) as a bitmap, and the bitmap, which must
    outlive the selector (FAISS keeps a pointer to it)."""
    bits = np.zeros(max(size, 1), bool)
    bits[labels] = True
    bitmap = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bitmap)), bitmap


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

    def search(
        self, queries: np.ndarray, fetch: int, selector: faiss.IDSelector | None = None, share: float = 1.0
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per shard (scores [Nq, kk], labels [Nq, kk], kk) with kk = min(fetch, shard size).

        `selector`: only labels it holds are returned (a filtered search); `share`, the share of
        videos it holds, widens IVF's probe to nprobe / share lists, so that about as many selected
        vectors are scanned as an unfiltered search scans vectors."""
        params = None
        if selector is not None:
            params = search_params(self.params, selector, share)

        def one(index: faiss.Index) -> tuple[np.ndarray, np.ndarray, int]:
            kk = min(fetch, int(index.ntotal))
            if kk == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), 0
            scores, labels = index.search(queries, kk, params=params)
            return scores, labels, kk

        if self.pool is None:
            return [one(s) for s in self.shards]
        return list(self.pool.map(one, self.shards))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.shards = []
