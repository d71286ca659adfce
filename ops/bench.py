"""`glccl bench ...`: benchmarks that print JSON (and write it with --out)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None) -> None:
    """JSON to stdout, and to `out` when given (written whole, then renamed)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (JSON on stdout)")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)

    heads = kinds.add_parser("heads", help="scoring throughput and peak memory of every head")
    heads.add_argument("--texts", type=int, default=1000)
    heads.add_argument("--videos", type=int, default=1000)
    heads.add_argument("--dim", type=int, default=512, help="D (512 for ViT-B/32)")
    heads.add_argument("--frames", type=int, default=12)
    heads.add_argument("--words", type=int, default=32)
    heads.add_argument("--heads", nargs="+", default=None, help="heads to run (default: all)")
    heads.add_argument("--chunk-texts", type=int, default=32)
    heads.add_argument("--chunk-videos", type=int, default=128)
    heads.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    heads.set_defaults(func=run_heads)


def run_heads(args: argparse.Namespace) -> int:
    from ops.bench_heads import bench_heads

    for name in ("texts", "videos", "dim", "frames", "words", "chunk_texts", "chunk_videos"):
        if getattr(args, name) < 1:
            print(f"glccl bench heads: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    result = bench_heads(
        texts=args.texts,
        videos=args.videos,
        dim=args.dim,
        frames=args.frames,
        words=args.words,
        heads=args.heads,
        chunk_texts=args.chunk_texts,
        chunk_videos=args.chunk_videos,
    )
    emit(result, args.out)
    return 0
