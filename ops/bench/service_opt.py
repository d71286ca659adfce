"""What each optimisation of the query path brings, measured one at a time (`glccl bench service`).

In-process and closed-loop: the same queries go through the search engine (encoder, candidates,
narrowing, full score) in one configuration after another, each adding one optimisation to the
last, starting from the naive server's (the whole 77-token context, one query at a time). Queries
per second here are the engine's; what pipelining adds needs the server and is measured by the
ladders (`service` vs `service_serial`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

import model.glim as glim
from service.engine import Query, SearchEngine

log = logging.getLogger(__name__)


def _rate(engine: SearchEngine, texts: Sequence[str], batch: int) -> float:
    queries = [Query(t, 10) for t in texts]
    engine.search(queries[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        engine.search(queries[i : i + batch])
    return len(queries) / (time.perf_counter() - start)


def optimisations(
    engine: SearchEngine, texts: Sequence[str], max_batch: int, threads: int, cores: int
) -> list[dict[str, Any]]:
    """Rows of {step, queries_per_s, speedup_vs_previous, speedup_vs_naive}; the engine is restored."""
    saved = (engine.context, engine.narrow_chunk, engine.candidates, glim.BLAS_PRODUCTS)
    steps: list[tuple[str, dict[str, Any]]] = [
        ("naive: 77-token context, one query at a time", {"context": "full", "batch": 1, "blas": False, "chunk": 0}),
        ("+ context cut to the longest query", {"context": "trim"}),
        (f"+ batches of {max_batch}", {"batch": max_batch}),
        ("+ frame products through OpenBLAS", {"blas": True}),
        (f"+ {threads} torch thread(s) instead of {cores}", {"threads": threads}),
        ("+ narrowing in chunks of the pool", {"chunk": None}),
    ]
    config: dict[str, Any] = {"threads": cores}
    rows: list[dict[str, Any]] = []
    try:
        for name, change in steps:
            config |= change
            engine.context = config["context"]
            engine.narrow_chunk = saved[1] if config["chunk"] is None else config["chunk"]
            glim.BLAS_PRODUCTS = config["blas"]
            torch.set_num_threads(config["threads"])
            rate = _rate(engine, texts, config["batch"])
            rows.append({"step": name, "queries_per_s": round(rate, 2)})
            log.info("optimisations: %s -> %.1f queries/s", name, rate)
        # the exact narrowing, taken away from the final configuration: every pooled video gets the full score
        engine.candidates = engine.pool
        rate = _rate(engine, texts, config["batch"])
        name = "- exact (S_vs + S_vw) / 2 narrowing: full score on the whole pool"
        rows.append({"step": name, "queries_per_s": round(rate, 2)})
    finally:
        engine.context, engine.narrow_chunk, engine.candidates, glim.BLAS_PRODUCTS = saved
        torch.set_num_threads(threads)
    base = rows[0]["queries_per_s"]
    for i, row in enumerate(rows):
        row["speedup_vs_previous"] = round(row["queries_per_s"] / rows[i - 1]["queries_per_s"], 2) if i else 1.0
        row["speedup_vs_naive"] = round(row["queries_per_s"] / base, 2)
    return rows
