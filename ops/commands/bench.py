"""`glccl bench ...`: benchmarks that print JSON (and write it with --out)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from model.io import atomic_write_text


def emit(result: dict[str, Any], out: Path | None) -> None:
    """JSON to stdout, and to `out` when given (written atomically)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")


# Each benchmark module adds its parser with add_parser(kinds) and sets func.
BENCH_MODULES = ("ops.bench.heads", "ops.bench.stores", "ops.bench.service")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (JSON on stdout)")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).add_parser(kinds)


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> str | None:
    """The first of `names` below 1, as an error line, or None."""
    for name in names:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    return None
