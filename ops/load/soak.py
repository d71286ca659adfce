"""`glccl soak`: a bounded soak at a fraction of capacity; memory and latency over time, JSON + PNG.

It starts `glccl serve` on a generated corpus (`ops/load/harness.py`), measures capacity, then sends
open-loop load at `--fraction` of it for `--minutes`, one `glccl loadtest` window after another,
sampling the server's RSS every second. Growth is judged on the second half of the run (the first
half includes warm-up: allocator pools, page cache of the index): the RSS slope per minute from a
least-squares line, and p99 latency of the last windows against the first ones.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("glccl.soak")

WINDOW_S = 20.0


def slope_per_minute(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of values against time, per minute (0 for fewer than two points)."""
    if len(times_s) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times_s) / 60, np.asarray(values), 1)[0])


def run_soak(work: Path, minutes: float, fraction: float, videos: int) -> tuple[dict[str, Any], dict[str, list]]:
    from ops.load.faults import LoadRun, capacity
    from ops.load.harness import ServerProcess, make_corpus

    logging.getLogger("httpx").setLevel(logging.WARNING)
    corpus = make_corpus(work / "corpus", videos=videos)
    with ServerProcess(corpus["checkpoint"], corpus["index"], work / "soak.log") as server:
        cap = capacity(server.url, 6.0)
        rate = max(1.0, cap * fraction)
        log.info("capacity %.1f/s; soaking at %.1f/s for %.1f min", cap, rate, minutes)
        series: dict[str, list] = {"t_s": [], "rss_mib": [], "windows": []}
        stop = threading.Event()
        start = time.monotonic()

        def sample_rss() -> None:
            while not stop.is_set():
                series["t_s"].append(round(time.monotonic() - start, 2))
                series["rss_mib"].append(round(server.rss() / 2**20, 2))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        counts: dict[str, int] = {}
        errors: dict[str, int] = {}
        while (elapsed := time.monotonic() - start) < minutes * 60:
            window = min(WINDOW_S, minutes * 60 - elapsed)
            report, _ = LoadRun(server.url, rate, window).start().finish()
            for k, v in report["status_counts"].items():
                counts[k] = counts.get(k, 0) + v
            for k, v in report["errors"].items():
                errors[k] = errors.get(k, 0) + v
            lat = report["latency_ms_2xx"]
            series["windows"].append({"t_s": round(elapsed + window, 1), "p50_ms": lat["p50"], "p99_ms": lat["p99"]})
        stop.set()
        sampler.join()
    half = len(series["t_s"]) // 2
    p99 = [w["p99_ms"] for w in series["windows"] if w["p99_ms"] is not None]
    k = max(1, len(p99) // 4)
    result = {
        "minutes": minutes,
        "capacity_rps": round(cap, 1),
        "rate_rps": round(rate, 1),
        "videos": videos,
        "status_counts": dict(sorted(counts.items())),
        "errors": errors,
        "rss_mib": {"start": series["rss_mib"][0], "end": series["rss_mib"][-1], "max": max(series["rss_mib"])},
        "rss_slope_mib_per_min_second_half": round(slope_per_minute(series["t_s"][half:], series["rss_mib"][half:]), 3),
        "p99_ms_first_quarter": round(float(np.mean(p99[:k])), 2) if p99 else None,
        "p99_ms_last_quarter": round(float(np.mean(p99[-k:])), 2) if p99 else None,
        "windows": series["windows"],
    }
    return result, series


def plot(series: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(series["t_s"], series["rss_mib"], color="tab:blue")
    top.set_ylabel("server RSS (MiB)")
    top.grid(alpha=0.3)
    t = [w["t_s"] for w in series["windows"]]
    bottom.plot(t, [w["p50_ms"] for w in series["windows"]], marker="o", label="p50")
    bottom.plot(t, [w["p99_ms"] for w in series["windows"]], marker="o", label="p99")
    bottom.set_ylabel("latency of 200s (ms)")
    bottom.set_xlabel("time (s)")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("soak", help="bounded soak at a fraction of capacity: RSS and latency over time")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak (at most 120)")
    p.add_argument("--fraction", type=float, default=0.5, help="load as a fraction of the measured capacity")
    p.add_argument("--videos", type=int, default=2000, help="videos in the generated corpus")
    p.add_argument("--work", type=Path, default=None, help="folder for the corpus and logs (default: temporary)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    p.add_argument("--plot", type=Path, default=None, help="write RSS and latency over time as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ops.report import emit

    if not 0 < args.minutes <= 120:
        raise ValueError(f"--minutes must be above 0 and at most 120, got {args.minutes:g}")
    if not 0 < args.fraction <= 1:
        raise ValueError(f"--fraction must be above 0 and at most 1, got {args.fraction:g}")
    with tempfile.TemporaryDirectory(prefix="glccl-soak-") as tmp:
        result, series = run_soak(args.work or Path(tmp), args.minutes, args.fraction, args.videos)
    if args.plot is not None:
        plot(series, args.plot)
    emit(result, args.out)
    return 0
