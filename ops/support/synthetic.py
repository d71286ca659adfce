"""A synthetic frame store: a read-only corpus of any size computed on demand from event vectors,
for benchmarks (`glccl bench service`) and tests that need a corpus with known structure (see
`ops/bench/service_corpus.py` for how the events are made)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.stores.base import FrameBatch, FrameStore, StoreManifest


class ReadOnlyStore(FrameStore):
    """A corpus computed on demand for benchmarks and tests: it cannot be written, and there is
    nothing to connect to; a catalog build copies it into a real store."""

    def put_many(
        self, ids: Sequence[str], frames: Any, mask: Any, times: Any, metadata: Sequence[dict] | None = None
    ) -> None:
        raise OSError(f"the {type(self).__name__} corpus is read-only")

    def delete(self, video_id: str) -> bool:
        raise OSError(f"the {type(self).__name__} corpus is read-only")

    def ping(self) -> None:
        """Always reachable: nothing to connect to."""

    def close(self) -> None:
        """Nothing to release."""


class SyntheticStore(ReadOnlyStore):
    """A read-only corpus computed on demand: video i is row i % chunk of chunk i // chunk, drawn
    with its own seed, so that any video can be read without the corpus being on disk (a catalog
    build copies it into the real store)."""

    def __init__(self, manifest: StoreManifest, videos: int, events: np.ndarray, seed: int = 0, chunk: int = 1000):
        self._manifest = manifest
        self.videos, self.seed, self.chunk = videos, seed, chunk
        self.events = np.asarray(events, dtype=np.float32)
        self.spread = float((self.events - self.events.mean(0)).std())  # per-dimension spread around their mean
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def manifest(self) -> StoreManifest:
        return self._manifest

    def _chunk_frames(self, c: int) -> np.ndarray:
        """Frames [m, F, D] fp16 of chunk c."""
        if self._cache is not None and self._cache[0] == c:
            return self._cache[1]
        f, dim = self.manifest.frames, self.manifest.dim
        m = min(self.chunk, self.videos - c * self.chunk)
        rng = np.random.default_rng([self.seed, c])
        k = rng.integers(2, 5, size=m)  # events per video
        # k-1 distinct cut points in 1..F-1: the k-1 smallest random keys among the F-1 positions
        cuts = rng.random((m, f - 1)).argsort(axis=1).argsort(axis=1) < (k - 1)[:, None]  # [m, F-1]
        segment = np.concatenate([np.zeros((m, 1), np.int64), np.cumsum(cuts, axis=1)], axis=1)  # [m, F]
        which = rng.integers(len(self.events), size=(m, 4))
        noise = self.spread * rng.uniform(0.4, 1.4, size=(m, 4, 1)).astype(np.float32)  # [m, 4, 1]
        base = self.events[which] + noise * rng.standard_normal((m, 4, dim), dtype=np.float32)  # [m, 4, D]
        rows = np.arange(m)[:, None]
        # in place: the same values as base + 0.5 * noise * z, without three 24 MB temporaries
        frames = rng.standard_normal((m, f, dim), dtype=np.float32)
        frames *= (0.5 * noise)[rows, segment]
        frames += base[rows, segment]
        frames = frames.astype(np.float16)  # [m, F, D]
        self._cache = (c, frames)
        return frames

    def get(self, ids: Sequence[str]) -> FrameBatch:
        nums = np.array([int(v[5:]) for v in ids], dtype=np.int64)
        f, dim = self.manifest.frames, self.manifest.dim
        out = np.empty((len(nums), f, dim), np.float16)
        for c in np.unique(nums // self.chunk).tolist():
            sel = nums // self.chunk == c
            out[sel] = self._chunk_frames(c)[nums[sel] % self.chunk]
        times = np.tile(np.arange(f, dtype=np.float32) * 0.5, (len(nums), 1))
        return FrameBatch(out, np.ones((len(nums), f), bool), times)

    def ids(self) -> list[str]:
        return [f"video{i:07d}" for i in range(self.videos)]

    def __len__(self) -> int:
        return self.videos

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id.startswith("video") and 0 <= int(video_id[5:]) < self.videos

    def close(self) -> None:
        self._cache = None
