"""Train every head with the same budget and seed on the same data; test each best checkpoint.

With `--pretrain-epochs N`, a meanP model is first trained (on `--pretrain-data`, by default the corpus
itself) and its CLIP towers are exported; every head then starts from those towers, as the published
heads all start from CLIP. On a synthetic corpus, `--pretrain-data DATA/events` pretrains on clips of
one event each (see model/data/synth_events.py): the closest stand-in for CLIP's image-text pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint
from model.data.datasets import load_corpus
from model.data.video import FrameCache
from model.evaluate import evaluate_model
from model.glccl import export_clip
from model.heads import HEADS, head_spec
from model.train import TrainConfig, train

log = logging.getLogger(__name__)


def pretrain_backbone(args: argparse.Namespace, configs: Callable, out: Path) -> tuple[Path, float]:
    """meanP trained from scratch; returns the exported CLIP weights and its learned logit scale."""
    model_config, train_config = configs(args, "meanP")
    weights = out / "clip_pretrained.pt"
    if not weights.exists():
        data = getattr(args, "pretrain_data", None) or args.data
        log.info("ablation: pretraining the backbone with meanP on %s for %d epochs", data, args.pretrain_epochs)
        train(model_config, replace(train_config, epochs=args.pretrain_epochs), data, out / "pretrain")
        export_clip(load_checkpoint(out / "pretrain" / "best"), weights)
    scale = load_checkpoint(out / "pretrain" / "best").head.logit_scale.item()
    return weights, scale


def ablate(args: argparse.Namespace, configs: Callable[[argparse.Namespace, str], tuple]) -> dict[str, Any]:
    heads = args.heads or list(HEADS)
    for name in heads:
        head_spec(name)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    test = load_corpus(args.data, "test")
    clip_weights, scale = (None, None)
    if getattr(args, "pretrain_epochs", None):
        clip_weights, scale = pretrain_backbone(args, configs, out)
    rows: dict[str, dict[str, Any]] = {}
    train_config: TrainConfig | None = None
    for name in heads:
        model_config, train_config = configs(args, name)
        if clip_weights is not None:
            model_config = replace(model_config, logit_scale_init=scale)
            if args.preset == "tiny":
                train_config = TrainConfig.preset("finetune", **_budget_overrides(args))
        run_dir = out / name
        log.info("ablation: training %s", name)
        start = time.perf_counter()
        summary = train(model_config, train_config, args.data, run_dir, clip_weights=clip_weights)
        model = load_checkpoint(run_dir / "best")
        cache = FrameCache(args.data / ".cache" / "frames", model.config.num_frames, model.image_size)
        metrics = evaluate_model(model, test, cache)
        metrics.update(train_seconds=round(time.perf_counter() - start, 1), steps=summary["steps"])
        metrics["best_val_rsum"] = summary["best_val_rsum"]
        rows[name] = metrics
        (run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from ops.train_cmd import format_table

    markdown = format_table(rows)
    result = {
        "heads": rows,
        "markdown": markdown,
        "train_config": train_config.__dict__ if train_config else None,
        "pretrained_from": str(clip_weights) if clip_weights else None,
    }
    (out / "ablation.json").write_text(json.dumps(result, indent=2, default=list) + "\n")
    (out / "ablation.md").write_text(markdown + "\n")
    return result


def _budget_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ops.train_cmd import TRAIN_OPTIONS

    return {k: getattr(args, k) for k in TRAIN_OPTIONS}
