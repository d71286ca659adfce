"""`glccl bench ...`: benchmarks that print JSON (and write it with --out)."""

from __future__ import annotations

import argparse
import importlib

# Each benchmark module adds its parser with add_parser(kinds) and sets func.
BENCH_MODULES = (
    "ops.bench.heads",
    "ops.bench.stores",
    "ops.bench.service_cli",
    "ops.bench.exactness",
    "ops.bench.text",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (JSON on stdout)")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).add_parser(kinds)
