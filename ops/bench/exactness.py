"""`glccl bench exactness`: does the service return the model's own ranking, on the user's model and videos?

The corpus is the test split's extracted features plus N distractors made in feature space from
the train split's features: distractor i is spliced from consecutive thirds of three train videos
drawn with its own seed (frames, mask and times of a slot all come from the same source video).
So 100,000 or 1,000,000 videos of the model's own distribution cost seconds, not hours of
decoding. Limits: a distractor repeats train frames exactly (three per source third), its events
change at fixed thirds, and no distractor is a near copy of a test video unless train holds one.

Every test caption is searched twice: through the service's engine (the served top-10) and by the
full score S over every video (exhaustive, batched over captions). Reported: the ground-truth
video's R@1/5/10 both ways, the share of captions whose served top-10 equals the exhaustive one up
to ties, the mean recall@10 of the exhaustive top-10, and each stage's cost.

Filtered searches: every video carries metadata {"bucket": (37 * n) % 100} (n its position), and
each caption is also searched with a selective filter (bucket 0: 1% of videos) and a broad one
(bucket < 50: 50%), against the exhaustive top-10 of the matching videos only (`--no-filters`
skips them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.common import check_positive
from ops.bench.spliced import SplicedStore, frame_batch
from ops.report import emit
from service.stores.base import StoreManifest

log = logging.getLogger(__name__)

TOP_K = 10
FILTERS = {  # name -> (filter, share of videos it matches)
    "selective_1pct": ({"field": "bucket", "eq": 0}, 0.01),
    "broad_50pct": ({"field": "bucket", "lt": 50}, 0.5),
}


def rank_of(found: Sequence[str], target: str) -> float:
    """1-based rank of target in found, or infinity when absent (beyond every k)."""
    return found.index(target) + 1 if target in found else float("inf")


def compare(
    served: Sequence[Sequence[str]],
    served_scores: Sequence[Sequence[float]],
    truth: Sequence[Sequence[str]],
    truth_scores: np.ndarray,
    targets: Sequence[str],
) -> dict[str, Any]:
    """Served against exhaustive top-k lists, per caption: exactness up to ties, recall of the
    exhaustive top-k, and the ground-truth video's R@1/5/10 both ways."""
    from ops.bench.service_corpus import exact_up_to_ties

    exact = exact_up_to_ties(served, served_scores, truth, truth_scores)
    recall = [len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(served, truth, strict=True)]
    out: dict[str, Any] = {
        "exact_share": round(float(np.mean(exact)), 4),
        "mean_recall_at_10": round(float(np.mean(recall)), 4),
    }
    for name, lists in (("served", served), ("exhaustive", truth)):
        ranks = np.array([rank_of(list(found), t) for found, t in zip(lists, targets, strict=True)])
        out[name] = {f"R@{k}": round(100 * float(np.mean(ranks <= k)), 2) for k in (1, 5, 10)}
    out["r_at_k_gap"] = {k: round(out["served"][k] - out["exhaustive"][k], 2) for k in out["served"]}
    return out


def check_targets(measured: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The exactness issue's targets: the served top-10 equals the exhaustive one for 99% of queries,
    and served R@1/5/10 within 0.3 points of exhaustive; each with the value and by how much it misses."""
    worst_gap = max(abs(v) for v in measured["r_at_k_gap"].values())
    return {
        "exact_share_at_least_0.99": {
            "value": measured["exact_share"],
            "met": measured["exact_share"] >= 0.99,
            "missed_by": round(max(0.0, 0.99 - measured["exact_share"]), 4),
        },
        "r_at_k_within_0.3": {
            "value": worst_gap,
            "met": worst_gap <= 0.3,
            "missed_by": round(max(0.0, worst_gap - 0.3), 2),
        },
    }


def _stage_ms(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for t in timings for k in t})
    return {k: round(float(np.median([t.get(k, 0.0) for t in timings])), 2) for k in names}


def run_exactness(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    from model.checkpoint import load_checkpoint
    from model.data.datasets import load_corpus
    from model.evaluate import encode_split, encode_videos
    from ops.bench.service_corpus import encode_texts, exhaustive_top
    from service.catalog import Catalog, StoreSpec, build_catalog
    from service.engine import fit_threads
    from service.index import IndexParams

    started = time.perf_counter()
    model = load_checkpoint(args.checkpoint).eval()
    manifest = StoreManifest.for_checkpoint(args.checkpoint)
    progress = not args.no_progress
    with threadpool_limits(len(os.sched_getaffinity(0))):  # offline work: every core
        test_corpus = load_corpus(args.data, "test", args.layout)
        split = encode_split(model, test_corpus, progress=progress)
        train_video, _, _ = encode_videos(model, load_corpus(args.data, "train", args.layout), progress=progress)
    encode_s = time.perf_counter() - started
    test = frame_batch(split.video.frames, split.video.frame_mask)
    train = frame_batch(train_video.frames, train_video.frame_mask)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.permutation(len(split.caption_video))[: args.queries])
    # encode_split keeps the captions of the decodable videos, in corpus order
    decodable = set(_kept_videos(split, test_corpus))
    kept = [c for c, v in zip(test_corpus.captions, test_corpus.caption_video, strict=True) if v in decodable]
    texts = [kept[i] for i in chosen.tolist()]
    targets = [split.video_ids[split.caption_video[i]] for i in chosen.tolist()]
    params = IndexParams(kind=args.kind, nprobe=args.nprobe, vectors=args.vectors)
    results = []
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for n in args.distractors:
            source = SplicedStore(manifest, split.video_ids, test, train, n, seed=args.seed)
            t0 = time.perf_counter()
            with threadpool_limits(len(os.sched_getaffinity(0))):
                build_catalog(
                    source, Path(work) / f"index-{n}", params, StoreSpec(), progress=progress, batch_size=1000
                )
            build_s = time.perf_counter() - t0
            catalog = Catalog.open(Path(work) / f"index-{n}", expected=manifest)
            try:
                t0 = time.perf_counter()
                with threadpool_limits(len(os.sched_getaffinity(0))), torch.inference_mode():
                    truth, truth_scores = exhaustive_top(
                        model, catalog.store, encode_texts(model, texts), TOP_K, chunk=args.chunk, progress=progress
                    )
                exhaustive_s = time.perf_counter() - t0
                fit_threads(args.threads)
                served = [{"pool": pool, **serve(model, catalog, texts, pool, args)} for pool in args.pool]
                first_stage = diagnose(model, catalog, texts) if args.first_stage else None
                filtered = [] if args.no_filters else filtered_runs(model, catalog, texts, args, progress)
            finally:
                catalog.close()
            by_pool = []
            for run in served:
                found, scores = run.pop("found"), run.pop("scores")
                measured = compare(found, scores, truth, truth_scores, targets)
                by_pool.append({**run, **measured, "targets": check_targets(measured)})
            row = {
                "videos": len(source),
                "distractors": n,
                "by_pool": by_pool,
                "exhaustive_ms_per_query": round(1000 * exhaustive_s / len(texts), 2),
                "build_s": round(build_s, 1),
            }
            if first_stage is not None:
                row["first_stage"] = first_stage
            if filtered:
                row["filtered"] = filtered
            log.info("exactness at %d videos: %s", len(source), row)
            results.append(row)
    return {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "backbone": model.config.backbone,
        "head": model.config.head,
        "queries": len(texts),
        "test_videos": len(split.video_ids),
        "train_videos": len(train.frames),
        "top_k": TOP_K,
        "exhaustive_setting": args.exhaustive,
        "candidates": args.candidates,
        "word_pool": args.word_pool,
        "first_stage": args.first_stage_kind,
        "first_stage_dims": args.first_stage_dims if args.first_stage_kind == "projected" else None,
        "index": params.to_dict(),
        "threads": args.threads,
        "encode_s": round(encode_s, 1),
        "sizes": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


def filtered_runs(
    model: Any, catalog: Any, texts: Sequence[str], args: argparse.Namespace, progress: bool
) -> list[dict[str, Any]]:
    """Each of FILTERS: the served top-10 (at every pool) against the exhaustive top-10 of the
    matching videos; exactness and recall only (the caption's own video may not match)."""
    import torch
    from threadpoolctl import threadpool_limits

    from ops.bench.service_corpus import encode_texts, exact_up_to_ties, exhaustive_top
    from service.engine import fit_threads
    from service.metadata import Filter

    out = []
    for name, (spec, share) in FILTERS.items():
        where = Filter.model_validate(spec)
        matching = sorted(catalog.matching(where))
        t0 = time.perf_counter()
        with threadpool_limits(len(os.sched_getaffinity(0))), torch.inference_mode():
            truth, truth_scores = exhaustive_top(
                model, catalog.store, encode_texts(model, texts), TOP_K, args.chunk, progress, ids=matching
            )
        exhaustive_s = time.perf_counter() - t0
        fit_threads(args.threads)
        by_pool = []
        for pool in args.pool:
            run = serve(model, catalog, texts, pool, args, where)
            found, scores = run.pop("found"), run.pop("scores")
            exact = exact_up_to_ties(found, scores, truth, truth_scores)
            recall = [len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(found, truth, strict=True)]
            matched = all(v in set(matching) for row in found for v in row)
            share_exact = round(float(np.mean(exact)), 4)
            by_pool.append(
                {
                    "pool": pool,
                    **run,
                    "exact_share": share_exact,
                    "mean_recall_at_10": round(float(np.mean(recall)), 4),
                    "every_result_matches": matched,
                    "target_exact_share_at_least_0.99": {
                        "met": share_exact >= 0.99,
                        "missed_by": round(max(0.0, 0.99 - share_exact), 4),
                    },
                }
            )
        out.append(
            {
                "filter": name,
                "where": spec,
                "share": share,
                "videos": len(matching),
                "by_pool": by_pool,
                "exhaustive_ms_per_query": round(1000 * exhaustive_s / len(texts), 2),
            }
        )
        log.info("filtered %s (%d videos): %s", name, len(matching), by_pool)
    return out


def serve(
    model: Any, catalog: Any, texts: Sequence[str], pool: int, args: argparse.Namespace, where: Any = None
) -> dict[str, Any]:
    """Every text searched alone through the service's engine (with the filter `where`): its top-10
    ids and scores, and the path and stage costs of a lone query."""
    from service.engine import Query, SearchEngine

    exhaustive = {"always": True, "never": False, "auto": None}[args.exhaustive]
    engine = SearchEngine(
        model,
        catalog,
        args.candidates,
        exhaustive,
        pool=pool,
        word_pool=args.word_pool,
        first_stage=args.first_stage_kind,
        first_stage_dims=args.first_stage_dims,
    )
    engine.warmup()  # also makes the projected stage's copy, outside the timed queries
    found, scores, timings = [], [], []
    t0 = time.perf_counter()
    for q in texts:
        outcome = engine.search([Query(q, TOP_K, where)])[0]
        found.append([h.video_id for h in outcome.hits])
        scores.append([h.score for h in outcome.hits])
        timings.append(outcome.timing_ms)
    seconds = time.perf_counter() - t0
    return {
        "path": "exhaustive" if "exhaustive" in timings[0] else "two_stage",
        "lone_query_ms": _stage_ms(timings),
        "served_ms_per_query": round(1000 * seconds / len(texts), 2),
        "found": found,
        "scores": scores,
    }


def diagnose(model: Any, catalog: Any, texts: Sequence[str]) -> dict[str, Any] | str:
    """How deep each first-stage proxy must reach for the exhaustive top-10 (ops/bench/first_stage.py)."""
    import torch

    from model.features import VideoFeatures
    from ops.bench.first_stage import MAX_VIDEOS, depths
    from ops.bench.service_corpus import encode_texts

    if len(catalog) > MAX_VIDEOS:
        return f"skipped: over {MAX_VIDEOS} videos (every frame of every video is scored in memory)"
    batch = catalog.get_frames(catalog.ids())
    video = VideoFeatures(torch.from_numpy(batch.frames).float(), torch.from_numpy(batch.mask))
    return depths(model.head, encode_texts(model, texts), video, TOP_K)


def _kept_videos(split: Any, corpus: Any) -> list[int]:
    """Corpus video indices of the decodable videos (encode_split leaves the others out)."""
    index = {v.video_id: i for i, v in enumerate(corpus.videos)}
    return [index[v] for v in split.video_ids]


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "exactness",
        help="served top-10 against the exhaustive full-score top-10, on your model and videos",
        description="The test split's features plus N distractors spliced in feature space from the train "
        "split's features; every (sampled) test caption searched through the service's engine and scored "
        "exhaustively with S. JSON: ground-truth R@1/5/10 both ways, exact share, recall@10, stage costs.",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset root with train and test splits")
    p.add_argument("--layout", default="auto")
    p.add_argument("--distractors", type=int, nargs="+", default=[100_000], help="corpus sizes to add (each a run)")
    p.add_argument("--queries", type=int, default=200, help="test captions sampled (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, nargs="+", default=[1000], help="the service's GLCCL_POOL (each measured)")
    p.add_argument(
        "--exhaustive", default="auto", choices=["auto", "always", "never"], help="the service's GLCCL_EXHAUSTIVE"
    )
    p.add_argument("--candidates", type=int, default=200, help="the service's GLCCL_CANDIDATES")
    p.add_argument("--word-pool", type=int, default=0, help="the service's GLCCL_WORD_POOL")
    p.add_argument(
        "--first-stage-kind", default="index", choices=["index", "projected"], help="the service's GLCCL_FIRST_STAGE"
    )
    p.add_argument("--first-stage-dims", type=int, default=32, help="the service's GLCCL_FIRST_STAGE_DIMS")
    p.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"])
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--vectors", default="cosine", choices=["frames", "cosine", "segments"])
    p.add_argument(
        "--first-stage",
        action="store_true",
        help="also: how deep each first-stage proxy must reach for the exhaustive top-10 (corpora up to 20,000)",
    )
    p.add_argument("--no-filters", action="store_true", help="skip the filtered searches (1%% and 50%% of videos)")
    p.add_argument("--threads", type=int, default=None, help="serving threads (default: the service's fit)")
    p.add_argument("--chunk", type=int, default=1024, help="videos per exhaustive block")
    p.add_argument("--work", type=Path, default=None, help="where the temporary index goes (default: $TMPDIR)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    error = check_positive(args, ("queries", "candidates", "chunk"))
    if error is None and min(args.pool) < 1:
        error = "--pool must be at least 1"
    if error is None and min(args.distractors) < 0:
        error = "--distractors must be 0 or more"
    if error:
        print(f"glccl bench exactness: error: {error}", file=sys.stderr)
        return 2
    emit(run_exactness(args), args.out)
    return 0
