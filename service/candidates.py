"""The candidate index the catalog searches: the base FAISS shards, an exact in-memory delta for
changes since the build, and tombstones for base videos deleted or replaced since."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

import faiss
import numpy as np

from service.index import FrameIndex, frame_vectors, label_selector, new_delta
from service.stores.base import FrameBatch

SELECTOR_CACHE = 16  # filters whose FAISS selectors are kept until the next change


class CandidateIndex:
    """Base shards + the delta of later changes + tombstones; ids in, ids out. Thread-safe.

    Video numbers: 0..n-1 for the base videos (their position in the build's id list), then
    increasing numbers for every later add, so a replaced video never reuses a number.
    """

    def __init__(
        self,
        base: FrameIndex | None,
        base_ids: Sequence[str],
        dim: int,
        exact: bool = True,
        overfetch: int = 4,
        vectors: str = "frames",
        segments: int = 4,
    ) -> None:
        if overfetch < 1:
            raise ValueError("overfetch must be at least 1")
        self.base = base
        self.dim = dim
        self.exact = exact
        self.vectors, self.segments = vectors, segments  # how a video becomes index vectors, for the delta
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
        self._selectors: dict[frozenset[str], tuple[faiss.IDSelector, np.ndarray, int]] = {}

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
        self._selectors.clear()
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
            self._selectors.clear()  # new video numbers: every cached selector is stale
            vectors, labels = frame_vectors(vnums, batch, self.vectors, self.segments)
            if len(vectors):
                self._delta.add_with_ids(vectors, labels)
            for video_id, vnum in zip(ids, vnums.tolist(), strict=True):
                self._vnum[video_id] = vnum
                self._id_of[vnum] = video_id

    def remove(self, video_id: str) -> bool:
        with self._lock:
            return self._drop(video_id)

    def search(
        self, queries: np.ndarray, k: int, allowed: Collection[str] | None = None
    ) -> list[tuple[list[str], np.ndarray]]:
        """For each query [Nq, D]: the k best videos by max-over-frames inner product, best first;
        with `allowed`, the k best of those videos only (FAISS skips the others as it searches).

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
        selector, share, delta_params = None, 1.0, None
        if allowed is not None:
            selector, bitmap, count = self._selector(allowed)
            if not count:
                return results
            share = count / max(len(self._vnum), 1)
            delta_params = faiss.SearchParameters()
            delta_params.sel = selector
        while todo.size and len(self._vnum):
            sub = np.ascontiguousarray(queries[todo])
            parts = self.base.search(sub, fetch, selector, share) if self.base is not None else []
            exact = [self.exact] * len(parts)
            sizes = self.base.sizes() if self.base is not None else []
            with self._lock:  # the delta and the id maps must not change under the merge
                kk = min(fetch, int(self._delta.ntotal))
                if kk:
                    parts.append((*self._delta.search(sub, kk, params=delta_params), kk))
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
        if allowed is not None:
            del bitmap  # the selector's bits, kept alive until here
        return results

    def _selector(self, allowed: Collection[str]) -> tuple[faiss.IDSelector, np.ndarray, int]:
        """(selector, its bitmap, matching videos) for `allowed`, cached until the index changes:
        mapping 50,000 ids to video numbers takes ~20 ms in Python, the search itself a few."""
        key = allowed if isinstance(allowed, frozenset) else frozenset(allowed)  # a frozenset keeps its hash
        with self._lock:
            found = self._selectors.get(key)
            if found is None:
                vnums = np.fromiter((self._vnum[v] for v in key if v in self._vnum), np.int64)
                found = (*label_selector(vnums, self._next), len(vnums))
                if len(self._selectors) >= SELECTOR_CACHE:
                    self._selectors.pop(next(iter(self._selectors)))
                self._selectors[key] = found
            return found

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
