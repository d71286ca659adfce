"""The moving parts of `glccl bench service`: a service in its own process, open-loop rate steps
against it (with `ops.load.loadtest`), and the raw batched throughput of the text encoder (the limit)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from model.encoders import trim_tokens
from model.glccl import RetrievalModel
from ops.load.harness import ServerProcess
from ops.load.loadtest import run_loadtest
from ops.load.samples import LoadConfig

log = logging.getLogger(__name__)


def service_process(checkpoint: Path, index: Path, settings: dict[str, Any], log_path: Path) -> ServerProcess:
    """`glccl serve` in a child process with GLCCL_* settings (JSON logs); a context manager."""
    env = {f"GLCCL_{k.upper()}": str(v) for k, v in settings.items()} | {"GLCCL_LOG_JSON": "true"}
    return ServerProcess(checkpoint, index, log_path, env=env, ready_timeout_s=600)


def one_step(url: str, rate: float, duration_s: float, queries: Sequence[str], target_ms: float) -> dict[str, Any]:
    """One open-loop run at `rate`; held when every answer is a 200 and p99 <= target_ms."""
    config = LoadConfig(url=f"{url}/search", rate=rate, duration_s=duration_s, queries=tuple(queries), timeout_s=5.0)
    report, _ = run_loadtest(config)
    lat = report["latency_ms"]
    errors = sum(report["errors"].values()) + sum(n for s, n in report["status_counts"].items() if s != "200")
    p99 = lat["p99"]
    answered = sum(report["status_counts"].values())
    ok = report["status_counts"].get("200", 0)
    return {
        "offered_rate": round(rate, 2),
        "achieved_rate": report["achieved_rate"],
        "ok_per_s": round(report["achieved_rate"] * ok / answered, 2) if answered else 0.0,
        "p50_ms": lat["p50"],
        "p95_ms": lat["p95"],
        "p99_ms": p99,
        "errors": errors,
        "held": errors == 0 and p99 is not None and p99 <= target_ms,
    }


def lone_queries(url: str, queries: Sequence[str], count: int = 30, gap_s: float = 0.05) -> dict[str, Any]:
    """Where a lone query's time goes: `count` queries one after another (a pause between them, so
    that none queues), the median and p90 of each stage of the server's `timing_ms` and of the round trip."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    rows = []
    with httpx.Client(timeout=30.0) as client:
        for i in range(count):
            started = time.perf_counter()
            reply = client.post(f"{url}/search", json={"query": queries[i % len(queries)], "top_k": 10})
            round_trip = (time.perf_counter() - started) * 1000
            reply.raise_for_status()
            timing = {k: v for k, v in reply.json()["timing_ms"].items() if v is not None}  # exhaustive: null
            rows.append({**timing, "round_trip": round_trip})
            time.sleep(gap_s)
    stages = list(rows[0])
    return {
        "queries": count,
        "median_ms": {k: round(float(np.median([r[k] for r in rows])), 1) for k in stages},
        "p90_ms": {k: round(float(np.percentile([r[k] for r in rows], 90)), 1) for k in stages},
    }


def step_rates(
    url: str,
    start_rate: float,
    duration_s: float,
    queries: Sequence[str],
    target_ms: float,
    label: str,
    factor: float = 2.0,
    bisections: int = 2,
    max_steps: int = 12,
    min_requests: int = 10,
) -> dict[str, Any]:
    """Finds the highest rate held: from `start_rate`, multiply by `factor` while held (divide
    while not, if the first is not, down to `min_requests` per step: a p99 of fewer says nothing),
    then bisect (geometric mean) between the highest held and the lowest not held `bisections`
    times. Steps are reported in increasing rate order."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    one_step(url, max(1.0, start_rate / 2), min(2.0, duration_s), queries, target_ms)  # warm-up, not reported
    steps: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        step = one_step(url, rate, duration_s, queries, target_ms)
        log.info("%s: %.2f/s offered -> p99 %s ms, %d errors", label, rate, step["p99_ms"], step["errors"])
        steps.append(step)
        return step["held"]

    floor = min_requests / duration_s
    held, failed, rate = 0.0, float("inf"), max(start_rate, floor)
    while len(steps) < max_steps and held * factor < failed and rate >= floor:
        if run(rate):
            held = rate
        else:
            failed = rate
        rate = rate * factor if failed == float("inf") else rate / factor
    for _ in range(bisections):
        if not held or failed == float("inf") or len(steps) >= max_steps:
            break
        mid = (held * failed) ** 0.5
        if run(mid):
            held = mid
        else:
            failed = mid
    steps.sort(key=lambda s: s["offered_rate"])
    rates = [s["offered_rate"] for s in steps if s["held"]]
    return {"highest_rate_held": max(rates, default=0.0), "target_p99_ms": target_ms, "steps": steps}


@torch.inference_mode()
def encoder_throughput(
    model: RetrievalModel, texts: Sequence[str], batch: int, seconds: float, context: str = "trim"
) -> float:
    """Queries per second of the text encoder alone, batches of `batch` taken in turn from `texts`."""
    tokenizer = model.tokenizer() if context != "full" else model.full_tokenizer()
    batches = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i : i + batch])
        if len(chunk) < batch:
            chunk += list(texts[: batch - len(chunk)])
        tokens = tokenizer(chunk)
        batches.append(trim_tokens(tokens) if context == "trim" else tokens)
    model.encode_text(batches[0])  # warm-up
    done, start, i = 0, time.perf_counter(), 0
    while True:
        model.encode_text(batches[i % len(batches)])
        done, i = done + batch, i + 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and i >= len(batches):
            return done / elapsed


def encoder_limit(
    model: RetrievalModel, texts: Sequence[str], batch_sizes: Sequence[int], seconds: float
) -> dict[str, Any]:
    """The limit: the best queries/s over batch sizes (tokens trimmed), with each size's figure."""
    per_batch = {str(b): round(encoder_throughput(model, texts, b, seconds), 2) for b in batch_sizes}
    best = max(per_batch, key=lambda b: per_batch[b])
    return {"queries_per_s": per_batch[best], "best_batch": int(best), "per_batch": per_batch}
