"""The command line of `glccl bench service` (the benchmark itself: ops/bench/service.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ops.bench.common import check_positive
from ops.bench.service import ServiceBenchOptions, bench_service
from ops.report import emit


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("service", help="the service against a naive server and the encoder's limit")
    p.add_argument("--videos", type=int, default=100_000)
    p.add_argument("--scale-videos", type=int, default=1_000_000, help="the larger corpus (0: skip)")
    p.add_argument("--backbone", default="ViT-B-32", help="open_clip config, random weights")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--candidates", type=int, default=200, help="videos scored with the full score per query")
    p.add_argument("--pool", type=int, default=1000, help="videos fetched from the ANN index and re-scored exactly")
    p.add_argument(
        "--pools", default="200,500,1000,2000,4000", help="pool sizes whose exactness is also measured (comma list)"
    )
    p.add_argument(
        "--vectors", default="segments", choices=("frames", "cosine", "segments"), help="what the ANN indexes"
    )
    p.add_argument("--segments", type=int, default=4, help="vectors per video with --vectors segments")
    p.add_argument("--kind", default="ivf", choices=("flat", "ivf", "hnsw"))
    p.add_argument(
        "--nlist", type=int, default=0, help="IVF lists per shard (0: as `glccl index build` picks, 2 sqrt(vectors))"
    )
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--codes", default="sq8", choices=("fp16", "sq8"))
    p.add_argument("--exact-queries", type=int, default=60, help="queries checked against exhaustive ranking")
    p.add_argument(
        "--scale-exact-queries",
        type=int,
        default=0,
        help="exactness at the larger corpus too, on this many queries (its exhaustive pass reads every frame: ~1 min)",
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per rate step")
    p.add_argument("--encoder-seconds", type=float, default=3.0, help="seconds per encoder measurement")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="the service's GLCCL_MAX_WAIT_MS")
    p.add_argument("--target-ms", type=float, default=100.0, help="p99 a rate must stay under to count as held")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker of the service (default: as it serves)"
    )
    p.add_argument("--opt-queries", type=int, default=48, help="queries per optimisation step (0: skip the table)")
    p.add_argument("--no-serial", action="store_true", help="skip the ladder of the service without pipelining")
    p.add_argument("--no-configs", action="store_true", help="skip the encoder configurations (torch, ONNX, cache)")
    p.add_argument(
        "--trained-checkpoint",
        type=Path,
        default=None,
        help="also measure exactness with this trained checkpoint (e.g. demo/checkpoint/best after `make demo`)",
    )
    p.add_argument("--work-dir", type=Path, default=None, help="keep the checkpoint, indexes and logs here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model and corpora, short steps")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    error = check_positive(
        args, ("videos", "frames", "candidates", "pool", "nprobe", "exact_queries", "max_batch", "segments")
    )
    pools: tuple[int, ...] = ()
    if error is None:
        try:
            pools = tuple(int(x) for x in args.pools.split(",") if x.strip())
        except ValueError:
            error = f"--pools must be a comma list of whole numbers, not {args.pools!r}"
        if error is None and any(x < 1 for x in pools):
            error = "--pools sizes must be at least 1"
    if error is None and args.threads is not None and args.threads < 1:
        error = "--threads must be at least 1"
    if error is None and min(args.scale_videos, args.nlist, args.scale_exact_queries, args.opt_queries) < 0:
        error = "--scale-videos, --nlist, --scale-exact-queries and --opt-queries must be 0 or more"
    if error is None and (args.duration <= 0 or args.encoder_seconds <= 0 or args.target_ms <= 0):
        error = "--duration, --encoder-seconds and --target-ms must be above 0"
    if error is None and args.trained_checkpoint and not (args.trained_checkpoint / "config.json").is_file():
        error = f"--trained-checkpoint {args.trained_checkpoint} holds no checkpoint (config.json is missing)"
    if error is None and args.scale_videos and args.scale_videos < args.videos:
        error = "--scale-videos must be 0 or at least --videos"
    if error:
        print(f"glccl bench service: error: {error}", file=sys.stderr)
        return 2
    if args.quick:
        args.backbone, args.videos, args.scale_videos = "glccl-test", 300, 600
        args.exact_queries, args.scale_exact_queries, args.duration, args.encoder_seconds = 8, 4, 1.0, 0.3
        args.opt_queries = min(args.opt_queries, 8)
    given = {"pools": pools, "duration_s": args.duration, "progress": not args.no_progress}
    given["serial_ladder"] = not args.no_serial
    given["configs"] = not args.no_configs
    names = [f.name for f in fields(ServiceBenchOptions)]  # the rest are named as the flags are
    result = bench_service(ServiceBenchOptions(**{n: given[n] if n in given else getattr(args, n) for n in names}))
    result["quick"] = bool(args.quick)
    emit(result, args.out)
    return 0
