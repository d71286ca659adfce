"""A first stage that scores every video the way GLCCL pools frames: the coarse score (S_vs + S_vw) / 2
over every frame of the catalog, each frame kept only as its coordinates in the corpus' k principal
directions (GLCCL_FIRST_STAGE=projected, docs/design.md section 3).

Why: the index's proxies (the sentence against the best frame, segment means, per-word nearest
frames) do not rank like S, because what decides S is GLIM's query-dependent pooling of a video's
frames; the coarse score does rank like S (`glccl bench exactness --first-stage`), and on frames cut
to 32 of 128 directions it still held the exhaustive top-10 within the first 1% of 10,090 videos for
95% of queries, against 23% for the index. k = 32 keeps 128 bytes per frame (fp32), a quarter of
the demo model's frames and a sixteenth of a ViT-B/32's.

Scored by the fused loop of service/coarse_kernel.py (model.glim.projected_coarse is its reference),
the rows split over the cores. The copy follows the catalog as the exhaustive path's does
(service/resident.py). The basis is the
top eigenvectors of the frames' second moment, taken from up to BASIS_SAMPLE videos at each rebuild
and kept for later puts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from model.features import TextFeatures
from model.glim import project_query
from model.heads import GLCCLHead
from service.catalog import Catalog
from service.coarse_kernel import coarse_scores
from service.resident import ResidentCorpus

log = logging.getLogger(__name__)

BASIS_SAMPLE = 8192  # videos whose frames fit the basis (evenly spaced over the catalog)
MIN_PART = 4096  # videos per thread at least: below this, a thread's hand-off costs more than it saves


def principal_basis(frames: np.ndarray, mask: np.ndarray, dims: int) -> torch.Tensor:
    """[D, dims] orthonormal: the top eigenvectors of sum over real frames of v v^T (no centring:
    what is kept are dot products, not distances from a mean)."""
    real = torch.from_numpy(np.ascontiguousarray(frames[mask], dtype=np.float32))  # [M, D]
    _, vectors = torch.linalg.eigh((real.T @ real).double())  # ascending eigenvalues
    return vectors[:, -dims:].flip(1).float().contiguous()


class ProjectedFrames(ResidentCorpus):
    """Every video's frames as coordinates [N, F, k] in the catalog's principal directions, on the CPU."""

    def __init__(self, dims: int, threads: int | None = None) -> None:
        super().__init__(torch.device("cpu"), torch.float32)
        if dims < 1:
            raise ValueError(f"the projected first stage needs at least 1 dimension, got {dims}")
        self.dims = dims
        self.basis = torch.empty(0)
        # The scan is split over every core this process may use, not fit_threads' per-worker share:
        # a lone query has the other core idle (one run: 50 -> 36 ms at 100,000 videos with two), and
        # under load the parts only share the cores with the encoder the way one thread would.
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        self._pool: ThreadPoolExecutor | None = None

    def _prepare(self, catalog: Catalog, ids: Sequence[str]) -> None:
        dim = catalog.manifest.dim
        if self.dims >= dim:
            self.basis = torch.eye(dim)  # nothing to cut: the coarse score itself
            return
        step = max(1, len(ids) // BASIS_SAMPLE)
        sample = catalog.get_frames(list(ids[::step])) if ids else None
        if sample is None or not sample.mask.any():
            self.basis = torch.eye(dim)[:, : self.dims]
            return
        self.basis = principal_basis(sample.frames, sample.mask, self.dims)
        log.info("projected first stage: %d of %d directions, fitted on %d videos", self.dims, dim, len(sample.frames))

    def _stored_dim(self, dim: int) -> int:
        return self.basis.shape[1]

    def _store(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(frames, dtype=np.float32)) @ self.basis

    def _scan(self, head: GLCCLHead, text: TextFeatures, keep: torch.Tensor, k: int) -> torch.Tensor:
        """[Nt, k] the best rows of the whole copy by the projected coarse score (service/coarse_kernel.py),
        the rows split into `threads` contiguous parts scored at once, then selected once (a selection
        per part cost more than the scoring at k = 1,000)."""
        query = project_query(text.sentence.float(), text.words.float(), self.basis, head.global_mix.float())
        s, g, w = (x.contiguous().numpy() for x in query)
        word_mask = text.word_mask.contiguous().numpy()
        mix = head.mix["vw"].detach().float()[: word_mask.shape[1], : word_mask.shape[1]].contiguous().numpy()
        coords, frame_mask = self.frames[: self.rows].numpy(), self.mask[: self.rows].numpy()
        scores = torch.empty(len(text), self.rows)  # [Nt, n]: 0.4 MB per query per 100,000 videos
        out = scores.numpy()
        cfg = head.config
        bounds = np.linspace(0, self.rows, min(self.threads, max(1, self.rows // MIN_PART)) + 1).astype(int)

        def part(i: int) -> None:
            rows = slice(bounds[i], bounds[i + 1])
            # a C-contiguous [Nt, part] buffer: out[:, rows] is strided when Nt > 1, and numba would
            # compile a second version of the loop for it (about a second) on the first batch
            mine = out[:, rows] if len(text) == 1 else np.empty((len(text), bounds[i + 1] - bounds[i]), np.float32)
            coarse_scores(coords[rows], frame_mask[rows], s, g, w, word_mask, mix, cfg.tau_g, cfg.tau_a, mine)
            if len(text) > 1:
                out[:, rows] = mine

        others = [self._workers().submit(part, i) for i in range(1, len(bounds) - 1)]
        part(0)  # in this thread, while the workers score the others
        for done in others:
            done.result()
        scores.masked_fill_(~keep, float("-inf"))
        return torch.topk(scores, min(k, self.rows), dim=1).indices

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="projected")
        return self._pool

    @torch.inference_mode()
    def pools(
        self, head: GLCCLHead, text: TextFeatures, pool: int, allowed: Sequence[frozenset[str] | None] | None = None
    ) -> list[list[str]]:
        """Each query's `pool` best live videos (allowed[i]: among those only) by the projected coarse
        score, best first; the engine builds this stage for GLCCL heads only. (A first pass in half
        the directions, keeping 10 x pool for the full basis, was slower on 2 cores: 58 against 46 ms
        per query at 100,000 videos.)"""
        text = TextFeatures(text.sentence.cpu(), text.words.cpu(), text.word_mask.cpu())
        with self._lock:
            keep, counts = self.keep_mask(len(text), allowed)
            k = min(pool, max(counts, default=0))
            if k == 0:
                return [[] for _ in range(len(text))]
            best_rows = self._scan(head, text, keep, k)
            return [[self.ids[r] for r in best_rows[i, : min(k, counts[i])].tolist()] for i in range(len(text))]
