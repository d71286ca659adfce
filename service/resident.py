"""The exhaustive exact path: every video's frames resident on the device, every query scored with S
against all of them (docs/design.md section 3).

Exact by construction: the top-k is the full score's top-k over the whole catalog, which no
first stage guarantees (`glccl bench exactness`). It costs one pass of S over the corpus per batch
of queries, so it is the default where that is cheap: on a GPU when the frames fit in its memory,
and anywhere when the catalog is no larger than the two-stage pool would be.

The copy follows the catalog: puts and deletes since it was made are applied row by row from the
catalog's journal; a new generation (reload, compaction) or a journal that no longer reaches back
rebuilds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from model.features import TextFeatures, VideoFeatures
from model.heads import Head
from service.catalog import Catalog
from service.moments import Hit, make_hits

log = logging.getLogger(__name__)

SCORE_CHUNK = 2048  # videos scored at a time: bounds the [Nt, chunk, Nw, F] intermediates
ROWS_CACHE = 16  # filters whose rows are kept (the catalog keeps its FILTER_CACHE matches likewise)


def frames_bytes(catalog: Catalog, dtype: torch.dtype) -> int:
    """What the resident copy of `catalog` takes on the device (frames, plus the mask)."""
    manifest = catalog.manifest
    per_video = manifest.frames * manifest.dim * torch.empty(0, dtype=dtype).element_size() + manifest.frames
    return len(catalog) * per_video


class ResidentCorpus:
    """Frames [N, F, D], masks [N, F] and liveness [N] of every video, on `device` in `dtype`."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self._lock = threading.Lock()
        self._catalog_key: tuple[int, str] | None = None  # (id of the catalog object, its generation)
        self.version = -1
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.frames = torch.empty(0)
        self.mask = torch.empty(0, dtype=torch.bool)
        self.alive = torch.empty(0, dtype=torch.bool)
        self.times = np.zeros((0, 0), np.float32)
        self.rows = 0
        self._rows_cache: dict[int, tuple[frozenset[str], tuple, torch.Tensor]] = {}  # _rows_of's

    def sync(self, catalog: Catalog) -> None:
        """Brings the copy up to the catalog's current version."""
        with self._lock:
            key = (id(catalog), catalog.generation)
            if key == self._catalog_key and catalog.version == self.version:
                return
            changes = catalog.changes_since(self.version) if key == self._catalog_key else None
            if changes is None:
                self._rebuild(catalog)
                self._catalog_key = key
            else:
                self._apply(catalog, changes)
            self.version = catalog.version

    def _rebuild(self, catalog: Catalog) -> None:
        started = time.perf_counter()
        version = catalog.version  # before reading: a change made meanwhile is applied on the next sync
        ids = catalog.ids()
        manifest = catalog.manifest
        self._prepare(catalog, ids)
        dim = self._stored_dim(manifest.dim)
        self.frames = torch.empty((len(ids), manifest.frames, dim), dtype=self.dtype, device=self.device)
        self.mask = torch.zeros((len(ids), manifest.frames), dtype=torch.bool, device=self.device)
        self.times = np.zeros((len(ids), manifest.frames), np.float32)
        for start in range(0, len(ids), 4096):
            batch = catalog.get_frames(ids[start : start + 4096])
            end = start + len(batch.frames)
            self.frames[start:end] = self._store(batch.frames)
            self.mask[start:end] = torch.from_numpy(batch.mask).to(self.device)
            self.times[start:end] = batch.times
        self.ids = list(ids)
        self.row_of = {v: i for i, v in enumerate(self.ids)}
        self.alive = torch.ones(len(ids), dtype=torch.bool, device=self.device)
        self.rows = len(ids)
        self.version = version
        log.info(
            "resident corpus: %d videos on %s (%.0f MB) in %.1f s",
            len(ids),
            self.device,
            self.frames.numel() * self.frames.element_size() / 1e6,
            time.perf_counter() - started,
        )

    # What is kept of each frame: the frame itself here; service/projected.py keeps its coordinates
    # in a few principal directions instead.
    def _prepare(self, catalog: Catalog, ids: Sequence[str]) -> None:
        """Called before a rebuild reads the catalog's frames."""

    def _stored_dim(self, dim: int) -> int:
        return dim

    def _store(self, frames: np.ndarray) -> torch.Tensor:
        """frames [n, F, D] as read from the catalog -> what the copy holds, on its device and dtype."""
        return torch.from_numpy(frames).to(self.device, self.dtype)

    def keep_mask(
        self, queries: int, allowed: Sequence[frozenset[str] | None] | None
    ) -> tuple[torch.Tensor, list[int]]:
        """[queries, rows] the rows each query may return (live, and among allowed[i] where given),
        with how many each may return. Call with the lock held."""
        n = self.rows
        keep = self.alive[:n].expand(queries, n)  # a view
        if not any(ids is not None for ids in allowed or []):
            return keep, [int(self.alive[:n].sum())] * queries
        keep = keep.clone()  # a copy only when some query is filtered
        for i, ids in enumerate(allowed or []):
            if ids is not None:
                keep[i] &= self._rows_of(ids)
        return keep, keep.sum(dim=1).tolist()

    def _rows_of(self, ids: frozenset[str]) -> torch.Tensor:
        """[rows] bool: True at the rows of `ids`. Kept per set for this version of the copy: the
        catalog hands out the same frozenset for a filter until its next change, and converting
        50,000 ids to rows costs more than the projected pass over 100,000 videos."""
        key = (self._catalog_key, self.version, self.rows)
        hit = self._rows_cache.get(id(ids))
        if hit is not None and hit[0] is ids and hit[1] == key:
            return hit[2]
        rows = [self.row_of[v] for v in ids if v in self.row_of]
        only = torch.zeros(self.rows, dtype=torch.bool, device=self.device)
        only[torch.tensor(rows, dtype=torch.long, device=self.device)] = True
        if len(self._rows_cache) >= ROWS_CACHE:
            self._rows_cache.pop(next(iter(self._rows_cache)))
        self._rows_cache[id(ids)] = (ids, key, only)  # the set is held, so its id is not reused meanwhile
        return only

    def _grow(self, rows: int) -> None:
        """Room for at least `rows` rows (capacity doubles, so appends stay amortised O(1))."""
        capacity = len(self.frames)
        if rows <= capacity:
            return
        new = max(rows, 2 * capacity, 16)

        def grown(x: torch.Tensor, fill: bool | float = 0) -> torch.Tensor:
            out = torch.full((new, *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
            out[: len(x)] = x
            return out

        self.frames, self.mask, self.alive = grown(self.frames), grown(self.mask, False), grown(self.alive, False)
        times = np.zeros((new, self.times.shape[1]), np.float32)
        times[: len(self.times)] = self.times
        self.times = times

    def _apply(self, catalog: Catalog, changes: Sequence[tuple[str, str]]) -> None:
        last = {video_id: op for op, video_id in changes}  # the last op of each video wins
        for video_id, op in last.items():
            row = self.row_of.get(video_id)
            if op == "del" or video_id not in catalog:
                if row is not None:
                    self.alive[row] = False
                continue
            batch = catalog.get_frames([video_id])
            if row is None:
                self._grow(self.rows + 1)
                row = self.rows
                self.rows += 1
                self.row_of[video_id] = row
                self.ids.append(video_id)
            self.frames[row] = self._store(batch.frames)[0]
            self.mask[row] = torch.from_numpy(batch.mask[0]).to(self.device)
            self.times[row] = batch.times[0]
            self.alive[row] = True

    @torch.inference_mode()
    def search(
        self,
        head: Head,
        text: TextFeatures,
        top_k: Sequence[int],
        allowed: Sequence[frozenset[str] | None] | None = None,
    ) -> list[list[Hit]]:
        """Each query's best top_k[i] rows by S over every live video (allowed[i]: among those ids
        only), best first."""
        with self._lock:
            n = self.rows
            keep, counts = self.keep_mask(len(text), allowed)  # [Nt, n]
            k = min(max(top_k, default=0), max(counts, default=0))
            if k == 0:
                return [[] for _ in top_k]
            best = torch.full((len(text), 0), float("-inf"), device=self.device)
            best_rows = torch.zeros((len(text), 0), dtype=torch.long, device=self.device)
            for start in range(0, n, SCORE_CHUNK):
                end = min(n, start + SCORE_CHUNK)
                video = VideoFeatures(self.frames[start:end], self.mask[start:end])
                scores = head(text, video)["S"].float()  # [Nt, chunk]
                scores = scores.masked_fill(~keep[:, start:end], float("-inf"))
                merged = torch.cat([best, scores], dim=1)
                rows = torch.arange(start, end, device=self.device).expand(len(text), -1)
                merged_rows = torch.cat([best_rows, rows], dim=1)
                top = torch.topk(merged, min(k, merged.shape[1]), dim=1)
                best, best_rows = top.values, merged_rows.gather(1, top.indices)
            out = []
            for i, want in enumerate(top_k):
                rows = best_rows[i, : min(want, counts[i], k)]
                if not len(rows):
                    out.append([])
                    continue
                weights = head.frame_weights(text[i : i + 1], VideoFeatures(self.frames[rows], self.mask[rows]))[0]
                picked = rows.cpu().numpy()
                out.append(
                    make_hits(
                        [self.ids[r] for r in picked.tolist()],
                        best[i, : len(rows)].cpu().tolist(),
                        weights.float().cpu().numpy(),
                        self.mask[rows].cpu().numpy(),
                        self.times[picked],
                    )
                )
            return out
