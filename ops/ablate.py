"""Train every head with the same budget and seed on the same data; test each best checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint
from model.data.datasets import load_corpus
from model.data.video import FrameCache
from model.evaluate import evaluate_model
from model.heads import HEADS, head_spec
from model.train import train

log = logging.getLogger(__name__)


def ablate(args: argparse.Namespace, configs: Callable[[argparse.Namespace, str], tuple]) -> dict[str, Any]:
    heads = args.heads or list(HEADS)
    for name in heads:
        head_spec(name)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    test = load_corpus(args.data, "test")
    rows: dict[str, dict[str, Any]] = {}
    for name in heads:
        model_config, train_config = configs(args, name)
        run_dir = out / name
        log.info("ablation: training %s", name)
        start = time.perf_counter()
        summary = train(model_config, train_config, args.data, run_dir)
        model = load_checkpoint(run_dir / "best")
        cache = FrameCache(args.data / ".cache" / "frames", model.config.num_frames, model.image_size)
        metrics = evaluate_model(model, test, cache)
        metrics.update(train_seconds=round(time.perf_counter() - start, 1), steps=summary["steps"])
        metrics["best_val_rsum"] = summary["best_val_rsum"]
        rows[name] = metrics
        (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from ops.train_cmd import format_table

    markdown = format_table(rows)
    result = {"heads": rows, "markdown": markdown, "train_config": summary["train_config"]}
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown + "\n")
    return result
