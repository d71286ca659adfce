"""Train every head with the same budget on the same data, over several seeds; test each best checkpoint.

Per seed, the towers' warm-up (model/recipe.py) is trained once and shared: every head except meanP
starts from it and trains `--epochs`; meanP, whose warm-up is itself, trains warm-up + head epochs
straight, so every head sees the same number of epochs. With several `--csc-weight` or `--tau-g`
values, GLCCL is first trained with each combination on the first seed and the one with the best
validation rsum is kept for every seed (test is never looked at to choose).
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.data.datasets import load_corpus
from model.data.video import FrameCache
from model.evaluate import evaluate_model
from model.heads import HEADS, head_spec
from model.recipe import train_model
from model.train import TrainConfig
from ops.commands.tables import format_mean_std_table

log = logging.getLogger(__name__)

Configs = Callable[[str], tuple[ModelConfig, TrainConfig]]


def _run(
    model_config: ModelConfig, train_config: TrainConfig, data: Path, run_dir: Path, towers_dir: Path, test
) -> dict[str, Any]:
    start = time.perf_counter()
    if model_config.head == "meanP":  # the warm-up is meanP itself: the same epochs in one stage
        total = train_config.towers_epochs + train_config.epochs
        train_config = replace(train_config, epochs=total, towers_epochs=0)
    summary = train_model(model_config, train_config, data, run_dir, towers_dir=towers_dir, progress=False)
    model = load_checkpoint(run_dir / "best")
    cache = FrameCache(data / ".cache" / "frames", model.config.num_frames, model.image_size)
    metrics = evaluate_model(model, test, cache)
    metrics.update(train_seconds=round(time.perf_counter() - start, 1), steps=summary["steps"])
    metrics["best_val_rsum"] = summary["best_val_rsum"]
    (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def sweep_glccl(
    configs: Configs, data: Path, out: Path, csc_weights: list[float], tau_gs: list[float], seed: int, test
) -> dict[str, Any]:
    """Every (csc_weight, tau_g) for GLCCL on one seed; returns the grid and the choice by val rsum."""
    grid = []
    for csc, tau in itertools.product(csc_weights, tau_gs):
        model_config, train_config = configs("glccl")
        model_config = replace(model_config, csc_weight=csc, tau_g=tau)
        train_config = replace(train_config, seed=seed)
        run_dir = out / f"sweep/csc{csc}_tau{tau}"
        metrics = _run(model_config, train_config, data, run_dir, out / f"seed{seed}" / "towers", test)
        grid.append({"csc_weight": csc, "tau_g": tau, "best_val_rsum": metrics["best_val_rsum"]})
        log.info("sweep: csc %.2f tau_g %.2f -> val rsum %.1f", csc, tau, metrics["best_val_rsum"])
    chosen = max(grid, key=lambda g: g["best_val_rsum"])
    return {"grid": grid, "chosen": {"csc_weight": chosen["csc_weight"], "tau_g": chosen["tau_g"]}}


def ablate(
    data: Path,
    out: Path,
    configs: Configs,
    heads: list[str] | None = None,
    seeds: int = 1,
    csc_weights: list[float] | None = None,
    tau_gs: list[float] | None = None,
) -> dict[str, Any]:
    heads = heads or list(HEADS)
    for name in heads:
        head_spec(name)
    out.mkdir(parents=True, exist_ok=True)
    test = load_corpus(data, "test")
    first_seed = configs("glccl")[1].seed
    seed_list = [first_seed + k for k in range(seeds)]
    sweep = None
    glccl_config = configs("glccl")[0]
    if (len(csc_weights or []) > 1 or len(tau_gs or []) > 1) and any(h.startswith("glccl") for h in heads):
        csc = csc_weights or [glccl_config.csc_weight]
        tau = tau_gs or [glccl_config.tau_g]
        sweep = sweep_glccl(configs, data, out, csc, tau, first_seed, test)
    runs: dict[str, list[dict[str, Any]]] = {h: [] for h in heads}
    for seed in seed_list:
        for name in heads:
            model_config, train_config = configs(name)
            if name.startswith("glccl"):
                tau = sweep["chosen"]["tau_g"] if sweep else (tau_gs or [model_config.tau_g])[0]
                model_config = replace(model_config, tau_g=tau)
                if name == "glccl":
                    csc = sweep["chosen"]["csc_weight"] if sweep else (csc_weights or [model_config.csc_weight])[0]
                    model_config = replace(model_config, csc_weight=csc)
            log.info("ablation: seed %d, training %s", seed, name)
            metrics = _run(
                model_config,
                replace(train_config, seed=seed),
                data,
                out / f"seed{seed}" / name,
                out / f"seed{seed}" / "towers",
                test,
            )
            runs[name].append({"seed": seed, **metrics})
    summary = {name: _mean_std(rows) for name, rows in runs.items()}
    queries = len(test.captions)
    markdown = format_mean_std_table(summary, seeds=len(seed_list), queries=queries)
    result = {
        "heads": summary,
        "runs": runs,
        "seeds": seed_list,
        "test_queries": queries,
        "test_videos": len(test.videos),
        "sweep": sweep,
        "train_config": configs("glccl")[1].__dict__,
        "markdown": markdown,
    }
    (out / "ablation.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    (out / "ablation.md").write_text(markdown + "\n")
    return result


def _mean_std(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction in ("t2v", "v2t"):
        out[direction] = {}
        for key in rows[0][direction]:
            values = [r[direction][key] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[direction][key] = {"mean": statistics.fmean(values), "std": std}
    out["train_seconds"] = statistics.fmean(r["train_seconds"] for r in rows)
    return out
