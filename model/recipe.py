"""Training from scratch in two stages: the towers warmed up with mean pooling, then the head.

Why (measured, see docs/training.md): trained from random weights, every head first falls into the
same collapse: within ~20 steps all captions and all videos map to nearly one direction (mean pairwise
cosine 0.999), the scores of a batch become equal and the loss sits at log(batch). Mean pooling
climbs out of it; the four-score heads (X-CLIP, GLCCL) do not within any budget we tried, because
their scores are maxima over words and over GLIM-pooled frames of features that carry no signal
yet, so almost no gradient reaches the towers (tower gradient norm 0.01 after the collapse, against
12 at initialisation). The published heads never meet this: they start from CLIP, whose towers
already align words with frames. Here the towers first learn that alignment on the corpus itself
with mean pooling (meanP), at a learning rate that does not collapse, and the head then trains from
those towers; this is what `glccl train` does by default when no CLIP weights are given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.glccl import export_clip, make_config
from model.io import atomic_write_json
from model.train import STATE, TrainConfig, train

log = logging.getLogger(__name__)

# From scratch, GLIM's temperature is scaled to the features: tau_g = 5 assumes CLIP's feature norms;
# towers trained here end with |s| ~19 and |V| ~55, so s.V/5 swings by tens across frames and GLIM's
# weights are nearly one-hot (mean max weight 0.66). 50 keeps them soft (validation rsum, sprites style:
# 79 at 5, 95 at 50, 97 at 100; shapes style: 52 at 5, 72 at 50). With CLIP weights the paper's 5 stays.
SCRATCH_TAU_G = 50.0
SCRATCH_LOGIT_SCALE = 2.6593  # log(1/0.07), CLIP's own start: 100 on random features blows gradients up

TOWERS_DIR = "towers"  # under the run folder: the warm-up stage's own run (best/, last/, curves)
TOWERS_WEIGHTS = "clip_towers.pt"


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def towers_config(model_config: ModelConfig) -> ModelConfig:
    """The warm-up stage's model: the same backbone, frames and words, mean pooling of raw frames."""
    return make_config(
        "meanP",
        model_config.backbone,
        num_frames=model_config.num_frames,
        max_words=model_config.max_words,
        logit_scale_init=model_config.logit_scale_init,
    )


def train_model(
    model_config: ModelConfig,
    cfg: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    clip_weights: Path | None = None,
    progress: bool = True,
    towers_dir: Path | None = None,
    towers_data: Path | None = None,
) -> dict[str, Any]:
    """`glccl train`: with CLIP weights (or `towers_epochs` 0) one stage, as published; from scratch,
    the towers' warm-up in `towers_dir` (default OUT/towers; runs that share one train it once) on
    `towers_data` (default `data_dir`; any supported layout, e.g. clips that each show what their
    captions say), then the head from its towers on `data_dir` in OUT (best/, last/, summary.json)."""
    out_dir = Path(out_dir)
    if clip_weights is not None or cfg.towers_epochs == 0 or model_config.head == "meanP":
        return train(model_config, cfg, data_dir, out_dir, resume=resume, clip_weights=clip_weights, progress=progress)
    stage_dir = Path(towers_dir) if towers_dir is not None else out_dir / TOWERS_DIR
    weights = stage_dir / TOWERS_WEIGHTS
    if resume and not (out_dir / STATE).is_file() and not (stage_dir / STATE).is_file():
        raise FileNotFoundError(f"nothing to resume: neither {out_dir / STATE} nor {stage_dir / STATE} exists")
    warm_cfg = replace(cfg, epochs=cfg.towers_epochs, stop_after=None)  # max_steps caps each stage
    if weights.is_file():
        log.info("towers already warmed up in %s; training the head", stage_dir)
        warm = json.loads((stage_dir / "summary.json").read_text())
    else:
        warm_data = Path(towers_data) if towers_data is not None else data_dir
        log.info(
            "stage 1 of 2: warming the towers up with mean pooling for %d epochs on %s", cfg.towers_epochs, warm_data
        )
        warm_resume = resume and (stage_dir / STATE).is_file()
        warm = train(towers_config(model_config), warm_cfg, warm_data, stage_dir, resume=warm_resume, progress=progress)
        if _rank() == 0:  # best/ is written by rank 0 only; the other processes wait for the export
            export_clip(load_checkpoint(stage_dir / "best"), weights)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
    scale = float(load_checkpoint(stage_dir / "best").head.logit_scale.detach())
    recipe = {
        "towers": {
            "head": "meanP",
            "epochs": cfg.towers_epochs,
            "best_val_rsum": warm["best_val_rsum"],
            "data": str(towers_data) if towers_data is not None else None,  # None: the head's corpus
        },
        "head": {"epochs": cfg.epochs, "lr_clip": cfg.head_lr_clip},
    }
    head_config = replace(model_config, logit_scale_init=scale, extra={**model_config.extra, "recipe": recipe})
    head_cfg = replace(cfg, lr_clip=cfg.head_lr_clip)
    log.info("stage 2 of 2: training head %s from the warmed-up towers", model_config.head)
    head_resume = resume and (out_dir / STATE).is_file()
    summary = train(
        head_config, head_cfg, data_dir, out_dir, resume=head_resume, clip_weights=weights, progress=progress
    )
    summary["recipe"] = {**recipe, "towers_seconds": warm["seconds"], "towers_config": asdict(warm_cfg)}
    summary["seconds"] = round(summary["seconds"] + warm["seconds"], 1)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
