"""The encoder configurations of `glccl bench service` side by side: torch, ONNX Runtime, and ONNX
Runtime with the query cache on a query mix with repeats (Zipf over a few thousand queries, as
search logs are), and ONNX Runtime with the projected first stage (the exact path). For each: a lone
query's stage times and the capacity when offered far more."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.service_load import lone_queries, one_step, service_process

log = logging.getLogger(__name__)

ZIPF_EXPONENT = 1.1
ZIPF_DISTINCT = 3000
EXACT_CANDIDATES = 1000  # the projected configuration re-ranks its whole pool of 1,000 (as exactness needs)
PROJECTED = {"first_stage": "projected", "exhaustive": "never"}
UNCUT_MS = 1e9  # a GLCCL_MAX_BATCH_MS no batch reaches: batches up to GLCCL_MAX_BATCH, as before the cut


def zipf_queries(distinct: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """n queries drawn from `distinct` with P(rank r) proportional to 1 / r^1.1."""
    ranks = np.arange(1, len(distinct) + 1)
    p = 1.0 / ranks**ZIPF_EXPONENT
    picks = np.random.default_rng(seed).choice(len(distinct), size=n, p=p / p.sum())
    return [distinct[i] for i in picks]


def configurations(
    checkpoint: Path,
    index: Path,
    base: dict[str, Any],
    onnx: Path,
    distinct: Sequence[str],
    zipf: Sequence[str],
    root: Path,
    overload_rate: float,
    duration_s: float,
    target_ms: float,
) -> dict[str, Any]:
    onnx_run = {"text_backend": "onnxruntime", "text_onnx": onnx, "encode_cache": 0}
    runs = (
        ("torch", {"text_backend": "torch", "encode_cache": 0}, distinct),
        ("onnxruntime", onnx_run, distinct),
        # the same with batches never cut by GLCCL_MAX_BATCH_MS (up to GLCCL_MAX_BATCH): that step alone
        ("onnxruntime_uncut", {**onnx_run, "max_batch_ms": UNCUT_MS}, distinct),
        ("onnxruntime_cache_zipf", {"text_backend": "onnxruntime", "text_onnx": onnx, "encode_cache": 4096}, zipf),
        # the path that is exact with trained weights (`glccl bench exactness`): the pool by GLCCL's
        # coarse score over every video, the whole pool re-ranked with S. Its speed only: these
        # random weights give the frames no principal directions, so its exactness here means nothing.
        # ("never": a corpus no larger than the pool would otherwise be scored exhaustively)
        ("onnxruntime_projected", {**onnx_run, **PROJECTED, "candidates": EXACT_CANDIDATES}, distinct),
    )
    out: dict[str, Any] = {}
    for name, extra, queries in runs:
        log.info("bench service: configuration %s", name)
        with service_process(checkpoint, index, {**base, **extra}, root / f"config-{name}.log") as server:
            lone = lone_queries(server.url, queries, count=60)
            capacity = one_step(server.url, overload_rate, duration_s, queries, target_ms)
        out[name] = {"settings": {k: str(v) for k, v in extra.items()}, "lone_query": lone, "capacity": capacity}
    torch_lone = out["torch"]["lone_query"]["median_ms"]
    out["ratios"] = {
        f"{name}_lone_speedup": round(torch_lone["round_trip"] / out[name]["lone_query"]["median_ms"]["round_trip"], 2)
        for name in ("onnxruntime", "onnxruntime_uncut", "onnxruntime_cache_zipf", "onnxruntime_projected")
    } | {
        f"{name}_capacity_ratio": round(
            out[name]["capacity"]["ok_per_s"] / max(out["torch"]["capacity"]["ok_per_s"], 1e-9), 2
        )
        for name in ("onnxruntime", "onnxruntime_uncut", "onnxruntime_cache_zipf", "onnxruntime_projected")
    }
    return out
