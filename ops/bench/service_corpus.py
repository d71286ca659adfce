"""Corpus, queries and exactness for `glccl bench service`.

The corpus is built from the served model's own text space, so that a query has true answers and
the top of the ranking is decided by the content of the videos, not by ties: every video is 2-4
events in consecutive frames (as `glccl synth` makes them), each event is the sentence feature of
a one-event caption ("a red circle moves left") plus a per-event offset and per-frame noise of
random strength. A query names one event or two in order; the videos that hold its events (with
little noise) score highest, and which of those a two-stage search must find is graded by the
noise, not arbitrary. Queries and events come from the same vocabulary but are drawn apart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from model.data.synth_captions import MOTIONS as CAPTION_MOTIONS
from model.data.synth_render import COLORS, SHAPES
from model.encoders import trim_tokens
from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel
from model.scoring import score_chunked
from ops.support.synthetic import SyntheticStore
from service.engine import Query, SearchEngine
from service.index import IndexParams
from service.stores.base import FrameStore, StoreManifest

log = logging.getLogger(__name__)

TIE_TOLERANCE = 1e-5  # relative: scores this close to the k-th best count as tied with it

THEN = " then "  # joins the two events of a two-event query (query_texts, _by_events)
# the vocabulary of `glccl synth` (model/data/synth_render.py, synth_captions.py), every motion but "still"
MOTIONS = tuple(finite for motion, (finite, _) in CAPTION_MOTIONS.items() if motion != "still")


def event_captions() -> list[str]:
    """Every one-event caption of the vocabulary (336)."""
    return [f"a {c} {s} {m}" for c in COLORS for s in SHAPES for m in MOTIONS]


def query_texts(n: int, seed: int = 1) -> list[str]:
    """n queries: half one event, half two events in order."""
    rng = np.random.default_rng(seed)
    events = event_captions()
    out = []
    for i in range(n):
        a, b = rng.choice(len(events), size=2, replace=False)
        out.append(events[a] if i % 2 == 0 else f"{events[a]}{THEN}{events[b]}")
    return out


@torch.inference_mode()
def encode_texts(model: RetrievalModel, texts: Sequence[str], batch: int = 64) -> TextFeatures:
    tokenizer = model.tokenizer()
    parts = [model.encode_text(trim_tokens(tokenizer(list(texts[i : i + batch])))) for i in range(0, len(texts), batch)]
    width = max(p.words.shape[1] for p in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:  # words [n, L, D] or mask [n, L] -> length `width`
        extra = width - x.shape[1]
        return torch.nn.functional.pad(x, (0, 0, 0, extra) if x.ndim == 3 else (0, extra))

    return TextFeatures(
        torch.cat([p.sentence for p in parts]),
        torch.cat([pad(p.words) for p in parts]),
        torch.cat([pad(p.word_mask) for p in parts]),
    )


@torch.inference_mode()
def exhaustive_top(
    model: RetrievalModel,
    store: FrameStore,
    text: TextFeatures,
    top_k: int = 10,
    chunk: int = 1024,
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> tuple[list[list[str]], np.ndarray]:
    """Each query's top_k video ids by the full score over every video of the store (or of `ids`),
    chunked, and their scores [Q, top_k]."""
    ids = store.ids() if ids is None else list(ids)
    best = torch.full((len(text), 0), float("-inf"))
    best_ids = np.zeros((len(text), 0), dtype=np.int64)
    with tqdm(total=len(ids), desc="exhaustive", unit="video", disable=not progress) as bar:
        for start, (_, batch) in zip(range(0, len(ids), chunk), store.iter_batches(chunk, ids), strict=True):
            video = VideoFeatures(torch.from_numpy(batch.frames).float(), torch.from_numpy(batch.mask))
            scores = score_chunked(model.head, text, video, chunk_texts=len(text), chunk_videos=256)["S"]  # [Q, m]
            merged = torch.cat([best, scores], dim=1)
            merged_ids = np.concatenate(
                [best_ids, np.tile(np.arange(start, start + len(batch.mask)), (len(text), 1))], 1
            )
            keep = torch.topk(merged, min(top_k, merged.shape[1]), dim=1)
            best = keep.values
            best_ids = np.take_along_axis(merged_ids, keep.indices.numpy(), axis=1)
            bar.update(len(batch.mask))
    return [[ids[i] for i in row] for row in best_ids.tolist()], best.numpy()


def exact_up_to_ties(
    found: Sequence[Sequence[str]],
    found_scores: Sequence[Sequence[float]],
    truth: Sequence[Sequence[str]],
    truth_scores: np.ndarray,
) -> list[bool]:
    """Per query: whether a served top-k equals the exhaustive one up to ties, i.e. each served video
    scores (exhaustively) at least the k-th best score within float rounding; two videos may tie for
    the k-th place."""
    floor = truth_scores[:, -1] - TIE_TOLERANCE * np.maximum(1.0, np.abs(truth_scores[:, -1]))
    return [
        set(a) == set(b) or (len(a) == len(b) and min(sc, default=np.inf) >= lo)
        for a, b, sc, lo in zip(found, truth, found_scores, floor.tolist(), strict=True)
    ]


def _by_events(texts: Sequence[str], same: Sequence[bool]) -> dict[str, float]:
    """Exact share of the queries naming one event and of those naming two ("... then ..."): the
    ANN stage's one vector per segment sees one event at a time, so the second kind is the hard one."""
    two = np.array([THEN in t for t in texts])
    same_arr = np.asarray(same, dtype=bool)
    return {kind: round(float(same_arr[sel].mean()), 4) for kind, sel in (("one", ~two), ("two", two)) if sel.any()}


def exactness(
    engine: SearchEngine,
    texts: Sequence[str],
    top_k: int = 10,
    batch: int = 16,
    progress: bool = True,
    pools: Sequence[int] = (),
) -> dict[str, Any]:
    """Share of queries whose two-stage top_k equals the exhaustive full-score top_k up to ties
    ("exact_share"; "same_ids_share" without the ties), at the engine's pool size and (in "by_pool")
    at each of `pools`; the exhaustive side is computed once."""
    text = encode_texts(engine.model, texts)
    truth, truth_scores = exhaustive_top(engine.model, engine.catalog.store, text, top_k, progress=progress)
    chosen = engine.pool
    rows = []
    try:
        for pool in dict.fromkeys(max(p, engine.candidates) for p in [*pools, chosen]):  # pool <= candidates: one row
            engine.pool = pool
            found: list[list[str]] = []
            found_scores: list[list[float]] = []
            started = time.perf_counter()
            for start in range(0, len(texts), batch):
                outcomes = engine.search([Query(t, top_k) for t in texts[start : start + batch]])
                found += [[h.video_id for h in o.hits] for o in outcomes]
                found_scores += [[h.score for h in o.hits] for o in outcomes]
            seconds = time.perf_counter() - started
            same_set = exact_up_to_ties(found, found_scores, truth, truth_scores)
            strict = [set(a) == set(b) for a, b in zip(found, truth, strict=True)]
            same_order = [a == b for a, b in zip(found, truth, strict=True)]
            recall = [len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(found, truth, strict=True)]
            rows.append(
                {
                    "pool": engine.pool,
                    "exact_share": round(float(np.mean(same_set)), 4),
                    "exact_share_by_events": _by_events(texts, same_set),
                    "same_ids_share": round(float(np.mean(strict)), 4),
                    "exact_order_share": round(float(np.mean(same_order)), 4),
                    "mean_recall_at_k": round(float(np.mean(recall)), 4),
                    "ms_per_query": round(1000 * seconds / len(texts), 1),
                }
            )
            log.info("exactness at pool %d: %s", engine.pool, rows[-1])
    finally:
        engine.pool = chosen
    main = next(r for r in rows if r["pool"] == max(chosen, engine.candidates))
    return {
        "queries": len(texts),
        "top_k": top_k,
        "candidates": engine.candidates,
        "videos": len(engine.catalog),
        **main,
        "by_pool": sorted(rows, key=lambda r: r["pool"]) if len(rows) > 1 else None,
    }


def build_corpus(
    root: Path, name: str, ckpt: Path, videos: int, events: np.ndarray, params: IndexParams, progress: bool
) -> tuple[Path, float]:
    """A catalog at root/index-<name> of `videos` synthetic videos made of `events`; (folder, build seconds)."""
    from service.catalog import StoreSpec, build_catalog

    source = SyntheticStore(StoreManifest.for_checkpoint(ckpt), videos, events)
    index = root / f"index-{name}"
    # Offline work: every core, whatever the serving setting (fit_threads) pinned in this thread.
    # k-means alone ran 54 s on one thread for 2,828 lists; FAISS and BLAS restore their counts after.
    with threadpool_limits(len(os.sched_getaffinity(0))):
        info = build_catalog(source, index, params, StoreSpec(), progress=progress, batch_size=1000)
    return index, info["build_seconds"]


def open_engine(model: RetrievalModel, ckpt: Path, index: Path, candidates: int, pool: int) -> SearchEngine:
    from service.catalog import Catalog

    catalog = Catalog.open(index, expected=StoreManifest.for_checkpoint(ckpt))
    return SearchEngine(model, catalog, candidates, pool=pool)


def trained_exactness(
    ckpt: Path,
    root: Path,
    videos: int,
    params: IndexParams,
    candidates: int,
    pool: int,
    queries: int,
    pools: Sequence[int],
    progress: bool,
) -> dict[str, Any]:
    """Exactness as `exactness` measures it, with a trained model's weights (e.g. the demo's) and a
    corpus built in its text space: random weights put every caption at cosine ~0.86 with every
    other, a trained text tower does not, and which parts of the score decide the top changes."""
    from model.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).eval()
    events = encode_texts(model, event_captions()).sentence.numpy()
    index, build_s = build_corpus(root, "trained", ckpt, videos, events, params, progress)
    engine = open_engine(model, ckpt, index, candidates, pool)
    try:
        result = exactness(engine, query_texts(queries), progress=progress, pools=pools)
    finally:
        engine.catalog.close()
    return {"checkpoint": str(ckpt), "backbone": model.config.backbone, "build_seconds": build_s, **result}
