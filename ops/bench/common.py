"""What the benchmarks' command lines share."""

from __future__ import annotations

import argparse


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> str | None:
    """The first of `names` below 1, as an error line, or None."""
    for name in names:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    return None
