"""Two-stage search (DESIGN.md §3): a pool from the catalog, narrowed exactly, then the full GLCCL score.

1. The catalog's FAISS index gives a wide pool of videos (`pool`, by cosine of the sentence
   feature with normalised frames or per-video vectors): cheap, approximate, and not the score.
2. The pool is re-scored exactly with the head's `coarse` score, for GLCCL (S_vs + S_vw) / 2 from
   the stored frames (the sentence-guided video's two scores, without GLIM's word-guided frames);
   the best `candidates` go on.
3. Those are scored with the full score S; the top k are kept, with GLIM's frame weights saying
   which moment matched.
`exhaustive` skips 1-2 and scores every video with S (verification).
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
        context: str = "trim",
        pool: int = 0,
    ) -> None:
        if context not in ("trim", "full"):
            raise ValueError(f"unknown context {context!r}; expected trim or full")
        self.device = device or torch.device("cpu")
        # fp16 on a GPU halves memory traffic; CPUs have no fast fp16 matmul, so they stay in fp32.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.context = context
        self.max_words = model.config.max_words
        # "full" is what open_clip's encode_text does: every query padded to the whole context (77).
        # It gives the same features as "trim" (the text transformer is causal) at several times the cost;
        # it is kept as the naive reference the benchmark compares against.
        self.tokenizer = model.tokenizer() if context == "trim" else model.full_tokenizer()
        self.catalog = catalog
        self.candidates = candidates
        self.pool = max(pool, candidates)  # pool <= candidates: no exact narrowing, the ANN order decides
        self.exhaustive = exhaustive

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> TextFeatures:
        tokens = self.tokenizer(list(texts))
        if self.context == "trim":
            return self.model.encode_text(trim_tokens(tokens).to(self.device))
        text = self.model.encode_text(tokens.to(self.device))  # Nw = 77
        # The heads' word-axis matrices are max_words long; the first positions are the same as trimmed ones.
        return TextFeatures(text.sentence, text.words[:, : self.max_words], text.word_mask[:, : self.max_words])

    def _frames(self, catalog: Catalog, ids: Sequence[str]) -> tuple[VideoFeatures, np.ndarray]:
        batch = catalog.get_frames(ids)
        frames = torch.from_numpy(batch.frames).to(self.device, self.dtype)
        mask = torch.from_numpy(batch.mask).to(self.device)
        return VideoFeatures(frames, mask), batch.times

    def narrow(self, text: TextFeatures, video: VideoFeatures, keep: int) -> torch.Tensor | None:
        """Positions of the `keep` best videos by the head's coarse score; None when all are kept."""
        if len(video) <= keep:
            return None
        coarse = self.model.head.coarse(text, video)
        if coarse is None:
            return None
        return torch.topk(coarse[0].float(), keep).indices.sort().values

    @torch.inference_mode()
    def rerank(
        self,
        text: TextFeatures,
        ids: Sequence[str],
        top_k: int,
        timing: dict[str, float],
        catalog: Catalog | None = None,
    ) -> list[Hit]:
        """Full score of one query (text of length 1) against the videos `ids` (narrowed to
        `candidates` first when there are more); best first. Adds its stages' ms to `timing`."""
        if not ids:
            return []
        t0 = time.perf_counter()
        video, times = self._frames(catalog or self.catalog, ids)
        t1 = time.perf_counter()
        chosen = None if self.exhaustive else self.narrow(text, video, self.candidates)
        if chosen is not None:
            video = VideoFeatures(video.frames[chosen], video.frame_mask[chosen])
            picked = chosen.cpu().numpy()
            times, ids = times[picked], [ids[i] for i in picked.tolist()]
        t2 = time.perf_counter()
        scores = score_chunked(self.model.head, text, video, chunk_texts=1, chunk_videos=4096)["S"][0].float()  # [n]
        k = min(top_k, len(ids))
        top = torch.topk(scores, k).indices
        best_video = VideoFeatures(video.frames[top], video.frame_mask[top])
        weights = self.model.head.frame_weights(text, best_video)[0]  # [k, F]
        best = weights.argmax(dim=-1).cpu().numpy()
        top_np = top.cpu().numpy()
        t3 = time.perf_counter()
        timing.update({"frames": (t1 - t0) * 1000, "narrow": (t2 - t1) * 1000, "rerank": (t3 - t2) * 1000})
        return [
            Hit(ids[i], float(scores[i]), int(b), float(times[i, b]))
            for i, b in zip(top_np.tolist(), best.tolist(), strict=True)
        ]

    def search(self, queries: Sequence[Query]) -> list[Outcome]:
        """One batch: encode together, pools together, narrow and re-rank each query on its own pool.

        Each outcome's timing carries "started" (a perf_counter stamp) so callers can tell queueing.
        """
        t0 = time.perf_counter()
        catalog = self.catalog  # once: a hot reload may swap it, and a batch must see one generation
        text = self.encode([q.text for q in queries])
        t1 = time.perf_counter()
        if self.exhaustive:
            all_ids = catalog.ids()
            pools = [all_ids] * len(queries)
        else:
            sentence = text.sentence.float().cpu().numpy()
            pools = [list(ids) for ids, _ in catalog.search_candidates(sentence, self.pool)]
        t2 = time.perf_counter()
        outcomes = []
        encode_ms, candidates_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        for i, q in enumerate(queries):
            timing = {"encode": encode_ms, "candidates": candidates_ms, "started": t0}
            hits = self.rerank(text[i : i + 1], pools[i], q.top_k, timing, catalog)
            outcomes.append(Outcome(hits, timing))
        return outcomes

    def warmup(self) -> None:
        """One search so the first real query does not pay for lazy initialisation."""
        if len(self.catalog):
            self.search([Query("warm up", 1)])
        else:
            self.encode(["warm up"])
