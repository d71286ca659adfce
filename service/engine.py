"""Two-stage search: candidates from the catalog, then the full GLCCL score on those candidates.

Stage 1 asks the catalog's FAISS index for the videos whose best frame matches the query's
sentence feature (for softmax pooling the max over frames bounds the pooled dot product from
above); stage 2 scores the query against each candidate's frames with the model's head and keeps
GLIM's frame weights to say which moment matched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from model.encoders import trim_tokens
from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel
from model.scoring import score_chunked
from service.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    text: str
    top_k: int


@dataclass(frozen=True)
class Hit:
    video_id: str
    score: float
    best_frame: int
    best_time_s: float


@dataclass
class Outcome:
    hits: list[Hit]
    timing_ms: dict[str, float] = field(default_factory=dict)


def fit_threads(threads: int | None = None) -> int:
    """torch threads = the cores this process may run on less one, unless told otherwise.

    The core left over is for the event loop, which must read requests to refuse them. On 2 shared
    cores one thread lost no capacity (45 vs 41-46 searches/s); under 3x load one pair of runs
    favoured it (p99 of the 200s 4.2 s vs 9.9 s), a later 2-thread run was as good: within noise."""
    n = threads or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(n)
    return n


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


class SearchEngine:
    def __init__(
        self,
        model: RetrievalModel,
        catalog: Catalog,
        candidates: int = 200,
        exhaustive: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        # fp16 on a GPU halves memory traffic; CPUs have no fast fp16 matmul, so they stay in fp32.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = model.tokenizer()
        self.catalog = catalog
        self.candidates = candidates
        self.exhaustive = exhaustive

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> TextFeatures:
        tokens = trim_tokens(self.tokenizer(list(texts))).to(self.device)
        return self.model.encode_text(tokens)

    def _frames(self, catalog: Catalog, ids: Sequence[str]) -> tuple[VideoFeatures, np.ndarray]:
        batch = catalog.get_frames(ids)
        frames = torch.from_numpy(batch.frames).to(self.device, self.dtype)
        mask = torch.from_numpy(batch.mask).to(self.device)
        return VideoFeatures(frames, mask), batch.times

    @torch.inference_mode()
    def rerank(self, text: TextFeatures, ids: Sequence[str], top_k: int, catalog: Catalog | None = None) -> list[Hit]:
        """Full score of one query (text of length 1) against the videos `ids`; best first."""
        if not ids:
            return []
        video, times = self._frames(catalog or self.catalog, ids)
        scores = score_chunked(self.model.head, text, video, chunk_texts=1, chunk_videos=4096)["S"][0].float()  # [n]
        k = min(top_k, len(ids))
        top = torch.topk(scores, k).indices
        chosen = VideoFeatures(video.frames[top], video.frame_mask[top])
        weights = self.model.head.frame_weights(text, chosen)[0]  # [k, F]
        best = weights.argmax(dim=-1).cpu().numpy()
        top_np = top.cpu().numpy()
        return [
            Hit(ids[i], float(scores[i]), int(b), float(times[i, b]))
            for i, b in zip(top_np.tolist(), best.tolist(), strict=True)
        ]

    def search(self, queries: Sequence[Query]) -> list[Outcome]:
        """One batch: encode together, candidates together, re-rank each query on its own candidates.

        Each outcome's timing carries "started" (a perf_counter stamp) so callers can tell queueing.
        """
        t0 = time.perf_counter()
        catalog = self.catalog  # once: a hot reload may swap it, and a batch must see one generation
        text = self.encode([q.text for q in queries])
        t1 = time.perf_counter()
        if self.exhaustive:
            all_ids = catalog.ids()
            candidate_ids = [all_ids] * len(queries)
        else:
            sentence = text.sentence.float().cpu().numpy()
            found = catalog.search_candidates(sentence, self.candidates)
            candidate_ids = [list(ids) for ids, _ in found]
        t2 = time.perf_counter()
        outcomes = []
        encode_ms, candidates_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        for i, q in enumerate(queries):
            r0 = time.perf_counter()
            hits = self.rerank(text[i : i + 1], candidate_ids[i], q.top_k, catalog)
            rerank_ms = (time.perf_counter() - r0) * 1000
            timing = {"encode": encode_ms, "candidates": candidates_ms, "rerank": rerank_ms, "started": t0}
            outcomes.append(Outcome(hits, timing))
        return outcomes

    def warmup(self) -> None:
        """One search so the first real query does not pay for lazy initialisation."""
        if len(self.catalog):
            self.search([Query("warm up", 1)])
        else:
            self.encode(["warm up"])
