"""Two-stage search (docs/design.md §3): a pool from the catalog, narrowed exactly, then the full GLCCL score.

1. The catalog's FAISS index gives a wide pool of videos (`pool`, by cosine of the sentence
   feature with normalised frames or per-video vectors): cheap, approximate, and not the score.
2. The pool is re-scored exactly with the head's `coarse` score, for GLCCL (S_vs + S_vw) / 2 from
   the stored frames (the sentence-guided video's two scores, without GLIM's word-guided frames);
   the best `candidates` go on.
3. Those are scored with the full score S; the top k are kept, with GLIM's frame weights saying
   which moment matched.
The exhaustive path (service/resident.py) skips 1-3: every video's frames resident on the device,
scored with S; chosen by `exhaustive` (None: where it is cheap, see use_exhaustive).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from model.encoders import trim_tokens
from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel
from model.heads import GLCCLHead
from model.scoring import score_chunked
from service.catalog import Catalog, LiveCatalog
from service.encode_cache import EncodeCache
from service.metadata import Filter
from service.moments import Hit, make_hits
from service.projected import ProjectedFrames
from service.resident import ResidentCorpus, frames_bytes

log = logging.getLogger(__name__)

# a resident corpus may take this share of the GPU's free memory (the rest: the scoring's intermediates)
EXHAUSTIVE_MEMORY_SHARE = 0.6
NARROW_CHUNK = 256  # pool videos read and coarse-scored at a time (3 MB of fp16 frames at 12 x 512)


@dataclass(frozen=True)
class Query:
    text: str
    top_k: int
    where: Filter | None = None  # only videos whose metadata satisfies it (service/metadata.py)


@dataclass(frozen=True)
class Encoded:
    """A batch between the two stages: encoded, not yet scored."""

    queries: list[Query]
    text: TextFeatures
    catalog: Catalog
    started: float  # perf_counter at the start of encoding
    encode_ms: float


@dataclass
class Outcome:
    hits: list[Hit]
    timing_ms: dict[str, float] = field(default_factory=dict)  # ms per stage
    started: float = 0.0  # perf_counter when its batch began encoding: callers tell queueing from it


def fit_threads(threads: int | None = None, pipeline: bool = False) -> int:
    """torch, FAISS and BLAS threads per worker: the cores this process may run on less one, unless
    told otherwise; halved when encoding and scoring run side by side (`pipeline`), one worker each.

    The core left over is for the event loop, which must read requests to refuse them. On 2 shared
    cores one thread lost no capacity (45 vs 41-46 searches/s); under 3x load one pair of runs
    favoured it (p99 of the 200s 4.2 s vs 9.9 s), a later 2-thread run was as good: within noise.
    Two workers of n threads each on n cores would make OpenMP teams spin against each other."""
    spare = max(1, len(os.sched_getaffinity(0)) - 1)
    n = threads or max(1, spare // 2 if pipeline else spare)
    _threads["n"] = n
    own_threads()
    return n


_threads: dict[str, int] = {}
_applied = threading.local()


def own_threads() -> None:
    """Applies fit_threads' setting in the calling thread (once per thread). OpenMP's and OpenBLAS's
    thread counts are per thread: a worker thread otherwise starts with every core in torch's and
    FAISS's OpenMP and FAISS's OpenBLAS, and two such workers oversubscribe the cores."""
    n = _threads.get("n")
    if n is None or getattr(_applied, "n", None) == n:
        return
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(n)  # every OpenMP and BLAS library loaded, numpy's OpenBLAS included
    _applied.n = n


class SearchEngine:
    def __init__(
        self,
        model: RetrievalModel,
        catalog: Catalog | LiveCatalog,
        candidates: int = 200,
        exhaustive: bool | None = False,
        device: torch.device | None = None,
        context: str = "trim",
        pool: int = 0,
        word_pool: int = 0,
        encode_cache: int = 0,
        text_encoder: Callable[[torch.Tensor], TextFeatures] | None = None,
        first_stage: str = "index",
        first_stage_dims: int = 32,
    ) -> None:
        self.device = device or torch.device("cpu")
        # fp16 on a GPU halves memory traffic; CPUs have no fast fp16 matmul, so they stay in fp32.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        # tokens -> TextFeatures: the model's own tower, or another runtime of it (service/text_backend.py)
        self.text_encoder = text_encoder or self.model.encode_text
        self.context = context
        self.max_words = model.config.max_words
        # the live generation, owned by `live` (shared with the service state, swapped by a hot reload)
        self.live = catalog if isinstance(catalog, LiveCatalog) else LiveCatalog(catalog)
        self.candidates = candidates
        self.pool = max(pool, candidates)  # pool <= candidates: no exact narrowing, the ANN order decides
        self.exhaustive = exhaustive  # None: chosen per batch (use_exhaustive)
        self.resident = ResidentCorpus(self.device, self.dtype)
        self.cache = EncodeCache(encode_cache)  # entries (0: off); hits and misses for /metrics
        self.word_pool = word_pool  # videos per word vector added to the sentence's pool (0: sentence only)
        if first_stage not in ("index", "projected"):
            raise ValueError(f"unknown first stage {first_stage!r}; expected index or projected")
        if first_stage == "projected" and not isinstance(model.head, GLCCLHead):
            raise ValueError("the projected first stage scores GLCCL's coarse score: it needs a glccl checkpoint")
        # projected: the pool by the coarse score over every video's frames in a few principal directions
        self.projected = ProjectedFrames(first_stage_dims) if first_stage == "projected" else None
        self.narrow_chunk = NARROW_CHUNK  # 0: the whole pool at once (the benchmark's before/after switch)
        self._scratch = threading.local()  # per worker thread: the narrowing's fp32 frames

    @property
    def catalog(self) -> Catalog:
        """The generation being served now."""
        return self.live.current

    @property
    def context(self) -> str:
        return self._context

    @context.setter
    def context(self, context: str) -> None:
        """trim: tokens cut to the batch's longest query; full: what open_clip's encode_text does, every
        query padded to the whole context (77). Full gives the same features (the text transformer is
        causal) at several times the cost; it is kept as the naive reference the benchmark compares against."""
        if context not in ("trim", "full"):
            raise ValueError(f"unknown context {context!r}; expected trim or full")
        self.tokenizer = self.model.tokenizer() if context == "trim" else self.model.full_tokenizer()
        self._context = context

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> TextFeatures:
        """The queries' features, from the cache where it holds them."""
        return self.cache.encode(texts, self._encode)

    def _encode(self, texts: Sequence[str]) -> TextFeatures:
        tokens = self.tokenizer(list(texts))
        if self.context == "trim":
            return self.text_encoder(trim_tokens(tokens).to(self.device))
        text = self.text_encoder(tokens.to(self.device))  # Nw = 77
        # The heads' word-axis matrices are max_words long; the first positions are the same as trimmed ones.
        return TextFeatures(text.sentence, text.words[:, : self.max_words], text.word_mask[:, : self.max_words])

    def _frames(self, catalog: Catalog, ids: Sequence[str]) -> tuple[VideoFeatures, np.ndarray]:
        batch = catalog.get_frames(ids)
        frames = torch.from_numpy(batch.frames).to(self.device, self.dtype)
        mask = torch.from_numpy(batch.mask).to(self.device)
        return VideoFeatures(frames, mask), batch.times

    def _chunk(self, frames: np.ndarray, mask: np.ndarray) -> VideoFeatures:
        """A chunk from `get_unordered` (fp16, perhaps strided views of the store's buffer) in the
        model's dtype on its device; on a CPU converted into this thread's reused buffer."""
        if frames.strides[0] % frames.itemsize:  # torch needs strides in whole elements
            frames = np.ascontiguousarray(frames)
        source = torch.from_numpy(frames)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return VideoFeatures(source.to(self.device, self.dtype), torch.from_numpy(mask).to(self.device))
        buf = getattr(self._scratch, "frames", None)
        if buf is None or buf.shape[0] < len(frames) or buf.shape[1:] != source.shape[1:]:
            buf = self._scratch.frames = torch.empty(source.shape)
        video = buf[: len(frames)]
        video.copy_(source)
        return VideoFeatures(video, torch.from_numpy(mask))

    def narrow(self, text: TextFeatures, ids: Sequence[str], catalog: Catalog) -> list[str]:
        """The `candidates` best of `ids` by the head's coarse score, read and scored `NARROW_CHUNK`
        videos at a time: a chunk's frames stay in the CPU's cache between the coarse score's two
        passes over them (GLIM's weights, then vbar), and the chunk's buffers are reused (fresh pages
        fault, which costs more here than the arithmetic). A chunk is read in the store's order, not
        the pool's (one copy instead of two). `ids` unchanged when the head has no coarse score."""
        scores, positions = [], []
        step = self.narrow_chunk or len(ids)
        for start in range(0, len(ids), step):
            frames, mask, order = catalog.get_unordered(ids[start : start + step])
            coarse = self.model.head.coarse(text, self._chunk(frames, mask))
            if coarse is None:
                return list(ids)
            scores.append(coarse[0].float())
            positions.append(order + start)
        best = torch.topk(torch.cat(scores), self.candidates).indices.cpu().numpy()  # [candidates]
        return [ids[i] for i in np.sort(np.concatenate(positions)[best]).tolist()]

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
        catalog = catalog or self.catalog
        t0 = time.perf_counter()
        if len(ids) > self.candidates:
            ids = self.narrow(text, ids, catalog)
        t1 = time.perf_counter()
        video, times = self._frames(catalog, ids)
        t2 = time.perf_counter()
        scores = score_chunked(self.model.head, text, video, chunk_texts=1, chunk_videos=4096)["S"][0].float()  # [n]
        k = min(top_k, len(ids))
        top = torch.topk(scores, k).indices
        best_video = VideoFeatures(video.frames[top], video.frame_mask[top])
        weights = self.model.head.frame_weights(text, best_video)[0].float().cpu().numpy()  # [k, F]
        top_np = top.cpu().numpy()
        hits = make_hits(
            [ids[i] for i in top_np.tolist()],
            scores[top].tolist(),
            weights,
            best_video.frame_mask.cpu().numpy(),
            times[top_np],
        )
        t3 = time.perf_counter()
        timing.update({"narrow": (t1 - t0) * 1000, "frames": (t2 - t1) * 1000, "rerank": (t3 - t2) * 1000})
        return hits

    def encode_batch(self, queries: Sequence[Query]) -> Encoded:
        """Stage one of a batch: the texts encoded together (with the catalog generation it will see)."""
        own_threads()
        t0 = time.perf_counter()
        catalog = self.catalog  # once: a hot reload may swap it, and a batch must see one generation
        text = self.encode([q.text for q in queries])
        return Encoded(list(queries), text, catalog, t0, (time.perf_counter() - t0) * 1000)

    def use_exhaustive(self, catalog: Catalog) -> bool:
        """Whether a batch is scored exhaustively (every video, S): as set, or (None) where that is
        cheap: the catalog no larger than the pool, or a GPU whose free memory holds its frames."""
        if self.exhaustive is not None:
            return self.exhaustive
        if len(catalog) <= self.pool:
            return True
        if self.device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        held = self.resident.frames.numel() * self.resident.frames.element_size()
        return frames_bytes(catalog, self.dtype) <= EXHAUSTIVE_MEMORY_SHARE * (free + held)

    def score_exhaustive(self, batch: Encoded) -> list[Outcome]:
        t0 = time.perf_counter()
        self.resident.sync(batch.catalog)
        allowed = [None if q.where is None else batch.catalog.matching(q.where) for q in batch.queries]
        t1 = time.perf_counter()
        found = self.resident.search(self.model.head, batch.text, [q.top_k for q in batch.queries], allowed)
        ms = (time.perf_counter() - t1) * 1000
        # the two-stage fields stay in the timing at 0 (the response's schema has them); "exhaustive" says which ran
        timing = {"encode": batch.encode_ms, "candidates": 0.0, "narrow": 0.0, "rerank": 0.0}
        timing.update(frames=(t1 - t0) * 1000, exhaustive=ms)
        return [Outcome(hits, dict(timing), batch.started) for hits in found]

    def score_batch(self, batch: Encoded) -> list[Outcome]:
        """Stage two: exhaustive where use_exhaustive says so; otherwise pools for the whole batch at
        once, then each query narrowed and re-ranked on its own."""
        own_threads()
        if self.use_exhaustive(batch.catalog):
            return self.score_exhaustive(batch)
        t1 = time.perf_counter()
        allowed = [None if q.where is None else batch.catalog.matching(q.where) for q in batch.queries]
        pools = self.pools(batch.text, batch.catalog, allowed)
        candidates_ms = (time.perf_counter() - t1) * 1000
        outcomes = []
        for i, q in enumerate(batch.queries):
            timing = {"encode": batch.encode_ms, "candidates": candidates_ms}
            hits = self.rerank(batch.text[i : i + 1], pools[i], q.top_k, timing, batch.catalog)
            outcomes.append(Outcome(hits, timing, batch.started))
        return outcomes

    def pools(
        self, text: TextFeatures, catalog: Catalog, allowed: Sequence[frozenset[str] | None] | None = None
    ) -> list[list[str]]:
        """Each query's pool: the sentence's `pool` nearest videos (or, with the projected first stage,
        the `pool` best by the coarse score), then (word_pool > 0) the union with each real word
        vector's `word_pool` nearest in the index, in one index call for the unfiltered queries of
        the batch. The words see what S_fw and S_sf score and what one sentence vector averages away
        (ColBERT's per-token retrieval).

        A filtered query (allowed[i], the ids its filter matches) searches the matching videos only:
        all of them when they are no more than the pool (the narrowing then scores each one exactly),
        otherwise FAISS restricted to them. So its results are the filtered corpus' own top-k, not
        the whole corpus' top-k with non-matches dropped. With the projected first stage, every
        (allowed) video ranked by the coarse score in the catalog's principal directions instead."""
        allowed = list(allowed) if allowed is not None else [None] * len(text)
        # rows searched together: the unfiltered ones, then each filter with more matches than the pool
        plain = [i for i, a in enumerate(allowed) if a is None]
        groups = [(plain, None)] if plain else []
        groups += [([i], a) for i, a in enumerate(allowed) if a is not None and len(a) > self.pool]
        if self.projected is not None:
            self.projected.sync(catalog)
            pools = self.projected.pools(self.model.head, text, self.pool, allowed)
        else:
            sentence = text.sentence.float().cpu().numpy()
            # a filter with no more matches than the pool: every match goes to the exact narrowing
            pools = [[] if a is None or len(a) > self.pool else sorted(a) for a in allowed]
            for rows_of_group, a in groups:
                found = catalog.search_candidates(sentence[rows_of_group], self.pool, a)
                for i, (ids, _) in zip(rows_of_group, found, strict=True):
                    pools[i] = list(ids)
        if self.word_pool:
            self._add_word_hits(pools, text, catalog, groups)
        return [list(dict.fromkeys(p)) for p in pools]

    def _add_word_hits(
        self,
        pools: list[list[str]],
        text: TextFeatures,
        catalog: Catalog,
        groups: list[tuple[list[int], frozenset[str] | None]],
    ) -> None:
        """Extends each query's pool with every real word vector's `word_pool` nearest videos (one
        index call per group of rows that share a filter). S_fw and S_sf score words against the
        frames each word picks out; neither the sentence's index search nor the coarse score
        (S_vs + S_vw) sees those, and a word's nearest frames are what they reward."""
        mask = text.word_mask.cpu().numpy()  # [Nq, Nw]
        words = text.words.float().cpu().numpy()  # [Nq, Nw, D]
        for rows_of_group, a in groups:
            rows, cols = np.nonzero(mask[rows_of_group])
            owners = [rows_of_group[r] for r in rows.tolist()]
            hits = catalog.search_candidates(words[rows_of_group][rows, cols], self.word_pool, a)
            for i, (ids, _) in zip(owners, hits, strict=True):
                pools[i].extend(ids)

    def search(self, queries: Sequence[Query]) -> list[Outcome]:
        """One batch, both stages."""
        return self.score_batch(self.encode_batch(queries))

    def warmup(self) -> None:
        """One search so the first real query does not pay for lazy initialisation."""
        if len(self.catalog):
            self.search([Query("warm up", 1)])
        else:
            self.encode(["warm up"])
        self.cache.clear()  # the warm-up query is not traffic
