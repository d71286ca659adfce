"""`glccl bench service`: the service side by side with a naive reference and the encoder's limit.

In one run, on the same cores, model and corpus (docs/design.md section 6):
- the limit: queries/s of the serving text encoder alone, batched, tokens trimmed;
- the service (`glccl serve` in its own process) under open-loop load, the rate stepped up;
- the naive reference: the same server, model and stores with one query at a time, the full
  77-token context and no batching;
- exactness: how often the two-stage top-10 equals exhaustive full-score ranking (a sample of
  queries, the exhaustive side computed in chunks over every video);
- scale: the same at a larger corpus (1,000,000 videos by default), p99 at the rate the service
  held at the first size, with bytes per video and resident memory.
The model is a randomly initialised GLCCL on a ViT-B/32-sized CLIP (speed does not depend on the
weights); the corpus is built in the model's own text space (see ops/bench/service_corpus.py).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ops.bench.service_targets import targets
from ops.load.loadtest import DEFAULT_QUERIES

log = logging.getLogger(__name__)

# The rate ladders start at these fractions of what the encoder alone sustains (the service: the
# batched limit; the naive server: the full-context encoder one query at a time), double while p99
# holds, then bisect twice between the highest rate held and the lowest not held.
SERVICE_START = 0.15
NAIVE_START = 0.25
OVERLOAD = 12  # x the start rate: the capacity step offers 1.8x the encoder limit (service), 3x (naive)
MAX_OVERLOAD = 1000.0  # requests/s: tiny models (--quick) encode thousands per second


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _sizes(index: Path, generation: str, videos: int) -> dict[str, int]:
    gen = index / generation
    store_bytes = _dir_bytes(gen / "store")
    return {
        "store_bytes_per_video": round(store_bytes / videos),
        "index_bytes_per_video": round((_dir_bytes(gen) - store_bytes) / videos),
    }


@dataclass(frozen=True)
class ServiceBenchOptions:
    """What `glccl bench service` measures and how long; the defaults are the plain command's."""

    videos: int = 100_000
    scale_videos: int = 1_000_000
    backbone: str = "ViT-B-32"
    frames: int = 12
    candidates: int = 200
    pool: int = 1000
    pools: tuple[int, ...] = (200, 500, 1000, 2000, 4000)
    vectors: str = "segments"
    segments: int = 4
    kind: str = "ivf"
    nlist: int = 0
    nprobe: int = 32
    codes: str = "sq8"
    exact_queries: int = 60
    scale_exact_queries: int = 0
    duration_s: float = 8.0
    encoder_seconds: float = 3.0
    max_batch: int = 32
    max_wait_ms: float = 0.0
    target_ms: float = 100.0
    work_dir: Path | None = None
    progress: bool = True
    threads: int | None = None
    opt_queries: int = 48
    serial_ladder: bool = True
    configs: bool = True  # torch / ONNX Runtime / ONNX Runtime + cache on a Zipf mix, side by side
    trained_checkpoint: Path | None = None


def bench_service(options: ServiceBenchOptions) -> dict[str, Any]:
    o = options
    from model.checkpoint import save_checkpoint
    from model.glccl import RetrievalModel, make_config
    from ops.bench.service_corpus import (
        build_corpus,
        encode_texts,
        event_captions,
        exactness,
        open_engine,
        query_texts,
        trained_exactness,
    )
    from ops.bench.service_load import (
        encoder_limit,
        encoder_throughput,
        lone_queries,
        one_step,
        service_process,
        step_rates,
    )
    from ops.bench.service_opt import optimisations
    from service.engine import fit_threads
    from service.index import IndexParams

    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    threads = fit_threads(o.threads, pipeline=True)  # per worker, as the pipelined service runs
    params = IndexParams(
        kind=o.kind, shards=2, nlist=o.nlist, nprobe=o.nprobe, codes=o.codes, vectors=o.vectors, segments=o.segments
    )
    queries = list(DEFAULT_QUERIES)
    own_tmp = o.work_dir is None
    root = Path(tempfile.mkdtemp(prefix="glccl-bench-service-")) if own_tmp else Path(o.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "service"}
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    try:
        torch.manual_seed(0)
        model = RetrievalModel(make_config("glccl", backbone=o.backbone, num_frames=o.frames)).eval()
        ckpt = save_checkpoint(model, root / "checkpoint")
        log.info("bench service: encoder limit (%d and %d threads)", threads, cores)
        t = time.perf_counter()
        # The limit is the encoder's best on these cores: over batch sizes and thread counts.
        by_threads = {}
        for n in sorted({threads, cores}):
            torch.set_num_threads(n)
            by_threads[n] = encoder_limit(model, queries, sorted({1, 8, o.max_batch}), o.encoder_seconds)
        best_threads = max(by_threads, key=lambda n: by_threads[n]["queries_per_s"])
        limit = {
            **by_threads[best_threads],
            "threads": best_threads,
            "queries_per_s_by_threads": {str(n): v["queries_per_s"] for n, v in by_threads.items()},
        }
        torch.set_num_threads(cores)  # the naive server's encoder: torch's default, every core
        naive_encoder = encoder_throughput(model, queries, 1, o.encoder_seconds, context="full")
        torch.set_num_threads(threads)
        events = encode_texts(model, event_captions()).sentence.numpy()
        t = lap("encoder", t)

        log.info("bench service: corpus of %d videos", o.videos)
        index, build_s = build_corpus(root, str(o.videos), ckpt, o.videos, events, params, o.progress)
        t = lap("build", t)
        engine = open_engine(model, ckpt, index, o.candidates, o.pool)
        nlist_used = engine.catalog.info.index.nlist  # the automatic choice, when 0
        exact = exactness(engine, query_texts(o.exact_queries), progress=o.progress, pools=o.pools)
        sizes = _sizes(index, engine.catalog.generation, o.videos)
        t = lap("exactness", t)
        trained = None
        if o.trained_checkpoint is not None:
            log.info("bench service: exactness with the trained model in %s", o.trained_checkpoint)
            trained = trained_exactness(
                o.trained_checkpoint, root, o.videos, params, o.candidates, o.pool, o.exact_queries, o.pools, o.progress
            )
            shutil.rmtree(root / "index-trained", ignore_errors=True)
            t = lap("exactness_trained", t)
        opt = None
        if o.opt_queries:
            opt = optimisations(engine, query_texts(o.opt_queries, seed=3), o.max_batch, threads, cores)
        engine.catalog.close()
        t = lap("optimisations", t)

        base = {"max_batch": o.max_batch, "max_wait_ms": o.max_wait_ms, "candidates": o.candidates, "pool": o.pool}
        # the ladders encode every query with torch (no cache), as before the cache and ONNX Runtime existed;
        # the encoder configurations are measured side by side below (service_configs.py)
        base |= {"threads": threads, "pipeline": True, "text_backend": "torch", "encode_cache": 0}
        # The naive server: one query at a time with the whole context, on torch's default threads (every core).
        naive_settings = {**base, "max_batch": 1, "max_wait_ms": 0, "context": "full", "threads": cores}
        naive_settings["pipeline"] = False
        serial = {**base, "pipeline": False, "threads": max(1, cores - 1)}  # one worker: what pipelining adds
        runs: dict[str, Any] = {}
        ladders = [
            ("service", base, limit["queries_per_s"] * SERVICE_START),
            ("naive", naive_settings, naive_encoder * NAIVE_START),
        ]
        if o.serial_ladder:
            ladders.insert(1, ("service_serial", serial, limit["queries_per_s"] * SERVICE_START))
        for name, settings, start_rate in ladders:
            log.info("bench service: load on the %s server", name)
            with service_process(ckpt, index, settings, root / f"{name}.log") as server:
                lone = lone_queries(server.url, queries)  # also warms the server up before its ladder
                ladder = step_rates(server.url, start_rate, o.duration_s, queries, o.target_ms, name)
                # Capacity whatever the latency: 200s per second when offered far more than it takes
                # (the rest answered 429): comparable even where no rate holds the p99 target.
                over = one_step(
                    server.url, min(start_rate * OVERLOAD, MAX_OVERLOAD), o.duration_s, queries, o.target_ms
                )
                log.info("%s: %.1f/s offered -> %.1f/s answered 200", name, over["offered_rate"], over["ok_per_s"])
                runs[name] = {
                    "settings": settings,
                    "lone_query": lone,
                    **ladder,
                    "capacity": over,
                    "rss_mib": round(server.rss() / 2**20, 1),
                }
            t = lap(name, t)
        held = runs["service"]["highest_rate_held"]
        configs = None
        if o.configs:
            from model.onnx_text import export_text_onnx
            from ops.bench.service_configs import ZIPF_DISTINCT, configurations, zipf_queries

            onnx = export_text_onnx(model.text, model.tokenizer(), root / "text.onnx")
            distinct = query_texts(ZIPF_DISTINCT, seed=7)
            overload = min(limit["queries_per_s"] * SERVICE_START * OVERLOAD, MAX_OVERLOAD)
            configs = configurations(
                ckpt,
                index,
                base,
                onnx,
                queries,
                zipf_queries(distinct, 4000),
                root,
                overload,
                o.duration_s,
                o.target_ms,
            )
            t = lap("configurations", t)

        scale: dict[str, Any] | None = None
        if o.scale_videos:
            shutil.rmtree(index, ignore_errors=True)  # disk: the larger corpus needs the room
            log.info("bench service: corpus of %d videos", o.scale_videos)
            big, big_build_s = build_corpus(root, str(o.scale_videos), ckpt, o.scale_videos, events, params, o.progress)
            t = lap("scale_build", t)
            engine = open_engine(model, ckpt, big, o.candidates, o.pool)
            big_nlist = engine.catalog.info.index.nlist
            scale_exact = (
                exactness(engine, query_texts(o.scale_exact_queries), progress=o.progress)
                if o.scale_exact_queries
                else None
            )
            big_sizes = _sizes(big, engine.catalog.generation, o.scale_videos)
            engine.catalog.close()
            t = lap("scale_exactness", t)
            # the rate held at the first size, or (none held) its lowest step: the same offered rate either way
            rate = held or runs["service"]["steps"][0]["offered_rate"]
            small_step = next((s for s in runs["service"]["steps"] if s["offered_rate"] == rate), None)
            with service_process(ckpt, big, base, root / "scale.log") as server:
                # warm-up as long as a step: the first size's server had its ladder's lower steps
                lone_big = lone_queries(server.url, queries)
                one_step(server.url, rate, o.duration_s, queries, o.target_ms)
                step = one_step(server.url, rate, o.duration_s, queries, o.target_ms)
                rss = server.rss() / 2**20
            t = lap("scale_load", t)
            scale = {
                "videos": o.scale_videos,
                "build_seconds": big_build_s,
                "nlist": big_nlist,
                "exactness": scale_exact,
                "offered_rate": rate,
                "step": step,
                "lone_query": lone_big,
                "p99_ratio_vs_first_size": round(step["p99_ms"] / small_step["p99_ms"], 2)
                if small_step and step["p99_ms"]
                else None,
                **big_sizes,
                "service_rss_mib": round(rss or 0.0, 1),
            }
            shutil.rmtree(big, ignore_errors=True)

        naive_held = runs["naive"]["highest_rate_held"]
        result.update(
            {
                "shapes": {
                    "videos": o.videos,
                    "frames": o.frames,
                    "backbone": o.backbone,
                    "dim": model.config.embed_dim,
                },
                "index": {**params.to_dict(), "nlist": nlist_used},
                "search": {"pool": o.pool, "candidates": o.candidates},
                "threads": threads,
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "build_seconds": build_s,
                **sizes,
                "limit": {**limit, "naive_encoder_queries_per_s": round(naive_encoder, 2)},
                "cores": cores,
                "service": runs["service"],
                "service_serial": runs.get("service_serial"),
                "naive": runs["naive"],
                "optimisations": opt,
                "encoder_configurations": configs,
                "ratios": {
                    "service_over_naive": round(held / naive_held, 2) if naive_held else None,
                    "service_over_naive_capacity": round(
                        runs["service"]["capacity"]["ok_per_s"] / max(runs["naive"]["capacity"]["ok_per_s"], 1e-9), 2
                    ),
                    "service_capacity_over_limit": round(
                        runs["service"]["capacity"]["ok_per_s"] / limit["queries_per_s"], 3
                    ),
                    "service_over_limit": round(held / limit["queries_per_s"], 3),
                    "service_over_limit_at_service_threads": round(
                        held / limit["queries_per_s_by_threads"][str(threads)], 3
                    ),
                },
                "exactness": exact,
                "exactness_trained": trained,
                "scale": scale,
                "stage_seconds": seconds,
            }
        )
        result["targets"] = targets(result)
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
