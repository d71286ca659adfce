"""Markdown tables of retrieval metrics, for `glccl evaluate` and `glccl ablate`."""

from __future__ import annotations

from typing import Any

KEYS = ("R1", "R5", "R10", "MdR", "MnR")


def format_table(rows: dict[str, dict]) -> str:
    """A markdown table: raw text-to-video and video-to-text figures, then DSL text-to-video."""
    head = "| run | " + " | ".join(f"t2v {k}" for k in KEYS) + " | " + " | ".join(f"v2t {k}" for k in KEYS)
    head += " | DSL t2v R1 |"
    lines = [head, "|" + "---|" * (2 + 2 * len(KEYS))]
    for name, m in rows.items():
        cells = [f"{m['t2v'][k]:.1f}" for k in KEYS] + [f"{m['v2t'][k]:.1f}" for k in KEYS]
        dsl = f"{m['dsl']['t2v']['R1']:.1f}" if "dsl" in m else "-"
        lines.append(f"| {name or m.get('checkpoint', '')} | " + " | ".join(cells) + f" | {dsl} |")
    return "\n".join(lines)


def format_mean_std_table(rows: dict[str, dict[str, Any]], seeds: int, queries: int) -> str:
    """Mean ± standard deviation over seeds of each head's figures, with the seeds and queries counted."""
    head = "| head | " + " | ".join(f"t2v {k}" for k in KEYS) + " | v2t R1 | v2t R5 | train s |"
    lines = [
        head,
        "|" + "---|" * (2 + len(KEYS) + 2),
    ]
    for name, m in rows.items():
        cells = [f"{m['t2v'][k]['mean']:.1f} ± {m['t2v'][k]['std']:.1f}" for k in KEYS]
        cells += [f"{m['v2t'][k]['mean']:.1f} ± {m['v2t'][k]['std']:.1f}" for k in ("R1", "R5")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['train_seconds']:.0f} |")
    lines.append(f"\n{seeds} seed(s), {queries} test queries (mean ± standard deviation over seeds).")
    return "\n".join(lines)
