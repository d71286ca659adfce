"""The exactness benchmark's corpus: the test videos' features plus distractors spliced on demand
from train features (see ops/bench/exactness.py for the construction and its limits), each with
synthetic metadata {"bucket": ...} for the filtered searches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ops.support.synthetic import ReadOnlyStore
from service.stores.base import FrameBatch, StoreManifest


class SplicedStore(ReadOnlyStore):
    """Read-only: the test videos' features, then `distractors` spliced from train features on demand
    (distractor i from its own seed, so any one can be read without the others)."""

    def __init__(
        self,
        manifest: StoreManifest,
        test_ids: Sequence[str],
        test: FrameBatch,
        train: FrameBatch,
        distractors: int,
        seed: int = 0,
        chunk: int = 1000,
    ) -> None:
        if distractors and len(train.frames) < 3:
            raise ValueError("distractors need at least 3 train videos to splice from")
        self._manifest = manifest
        self.test_ids = list(test_ids)
        self._test_num = {v: i for i, v in enumerate(self.test_ids)}
        self.test, self.train = test, train
        self.distractors, self.seed, self.chunk = distractors, seed, chunk
        f = manifest.frames
        self.bounds = [0, f // 3, 2 * f // 3, f]  # the three thirds' slots

    @property
    def manifest(self) -> StoreManifest:
        return self._manifest

    def _spliced(self, nums: np.ndarray) -> FrameBatch:
        """Distractors `nums` (0-based): slot range j of distractor i from train video src[i, j]."""
        f, dim = self._manifest.frames, self._manifest.dim
        frames = np.empty((len(nums), f, dim), np.float16)
        mask = np.zeros((len(nums), f), bool)
        times = np.zeros((len(nums), f), np.float32)
        for c in np.unique(nums // self.chunk).tolist():
            rng = np.random.default_rng([self.seed, c])
            src = rng.integers(len(self.train.frames), size=(self.chunk, 3))  # [chunk, 3]
            sel = np.flatnonzero(nums // self.chunk == c)
            rows = src[nums[sel] % self.chunk]  # [m, 3]
            for j in range(3):
                lo, hi = self.bounds[j], self.bounds[j + 1]
                frames[sel, lo:hi] = self.train.frames[rows[:, j], lo:hi]
                mask[sel, lo:hi] = self.train.mask[rows[:, j], lo:hi]
                times[sel, lo:hi] = self.train.times[rows[:, j], lo:hi]
        empty = ~mask.any(1)  # every source third padding (short train videos): keep the first source's first frame
        mask[empty, 0] = True
        return FrameBatch(frames, mask, times)

    def get(self, ids: Sequence[str]) -> FrameBatch:
        f, dim = self._manifest.frames, self._manifest.dim
        out = FrameBatch(
            np.empty((len(ids), f, dim), np.float16), np.zeros((len(ids), f), bool), np.zeros((len(ids), f), np.float32)
        )
        test_rows = [(i, self._test_num[v]) for i, v in enumerate(ids) if v in self._test_num]
        if test_rows:
            at, rows = (np.array(x) for x in zip(*test_rows, strict=True))
            _put(out, at, self.test, rows)
        spliced = [(i, int(v[len("distractor") :])) for i, v in enumerate(ids) if v not in self._test_num]
        if spliced:
            at, nums = (np.array(x) for x in zip(*spliced, strict=True))
            _put(out, at, self._spliced(nums), np.arange(len(nums)))
        return out

    def ids(self) -> list[str]:
        return self.test_ids + [f"distractor{i:07d}" for i in range(self.distractors)]

    def _bucket(self, video_id: str) -> int:
        n = self._test_num.get(video_id)
        n = len(self.test_ids) + int(video_id[len("distractor") :]) if n is None else n
        return (37 * n) % 100  # 37 is prime to 100: every block of 100 videos holds each bucket once

    def get_metadata(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return [{"bucket": self._bucket(v)} for v in ids]

    def all_metadata(self) -> dict[str, dict[str, Any]]:
        return {v: {"bucket": self._bucket(v)} for v in self.ids()}

    def __len__(self) -> int:
        return len(self.test_ids) + self.distractors

    def __contains__(self, video_id: object) -> bool:
        if video_id in self._test_num:
            return True
        if not (isinstance(video_id, str) and video_id.startswith("distractor") and video_id[10:].isdigit()):
            return False
        return int(video_id[10:]) < self.distractors


def _put(out: FrameBatch, at: np.ndarray, source: FrameBatch, rows: np.ndarray) -> None:
    out.frames[at], out.mask[at], out.times[at] = source.frames[rows], source.mask[rows], source.times[rows]


def frame_batch(frames: Any, mask: Any, times: np.ndarray | None = None) -> FrameBatch:
    frames = frames.cpu().numpy().astype(np.float16)
    mask = mask.cpu().numpy().astype(bool)
    if times is None:  # the evaluation encoder keeps no times: slots at the sampling stride are good enough here
        times = np.tile(np.arange(frames.shape[1], dtype=np.float32), (len(frames), 1))
    return FrameBatch(frames, mask, times)
