"""Training: AdamW with separate learning rates, warm-up then cosine, validation-chosen checkpoints.

One process on CPU here; several GPUs through torchrun, where each process encodes its share of
the batch and the features are gathered so the contrastive loss sees the whole batch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.data.clips import VideoTextTrainDataset, collate_skip_bad
from model.data.datasets import Corpus, training_splits
from model.data.video import FrameCache
from model.device import resolve_device
from model.encoders import trim_tokens
from model.evaluate import evaluate_model
from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel, loss_for
from model.io import atomic_write, atomic_write_json
from model.plots import plot_training_curve

log = logging.getLogger(__name__)

STATE = "trainer_state.pt"
VAL_SPLIT = "val_split.json"  # the validation videos carved from train, when the layout has no val split


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    max_steps: int | None = None  # cap on the optimiser steps of the whole run (the schedule spans it)
    stop_after: int | None = None  # end this invocation at this step, to resume later (schedule unchanged)
    batch_size: int = 128
    lr_new: float = 1e-4  # heads, temporal transformer, logit scale
    lr_clip: float = 1e-7  # the CLIP towers (pretrained); raise it when training from scratch
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup: float = 0.1  # fraction of the steps spent warming up
    grad_clip: float = 1.0
    eval_every: int = 0  # steps between validations; 0 means once per epoch
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # auto, cpu or cuda
    # From scratch (no CLIP weights): epochs of the towers' warm-up with mean pooling before the head
    # trains, and the towers' learning rate after it (see model/recipe.py). Ignored with CLIP weights.
    towers_epochs: int = 0
    head_lr_clip: float | None = None  # None: lr_clip

    def __post_init__(self) -> None:
        for name in ("epochs", "max_steps", "stop_after", "eval_every", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "eval_every" else 1):
                raise ValueError(f"{name} must be at least {0 if name == 'eval_every' else 1}, got {value}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: a contrastive batch needs negatives")
        if self.num_workers < 0:
            raise ValueError("num_workers must be at least 0")
        if self.towers_epochs < 0:
            raise ValueError(f"towers_epochs must be at least 0, got {self.towers_epochs}")
        if self.head_lr_clip is None:
            object.__setattr__(self, "head_lr_clip", self.lr_clip)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """'published': the paper's MSR-VTT settings (real CLIP weights); 'tiny': a from-scratch CLIP on
        synthetic video; 'finetune': a small CLIP pretrained here, its towers at a 10x lower rate."""
        presets = {
            "published": cls(),
            # from scratch: 12 epochs warming the towers up, then 8 of the head, all at 3e-4 (at 1e-3 the
            # towers collapse to one direction in ~20 steps; see docs/training.md)
            "tiny": cls(
                epochs=8, towers_epochs=12, batch_size=32, lr_new=3e-4, lr_clip=3e-4, weight_decay=0.05, eval_every=0
            ),
            # fine-tuning a small backbone that was pretrained here (glccl ablate --pretrain-epochs)
            "finetune": cls(epochs=15, batch_size=32, lr_new=1e-3, lr_clip=1e-4, weight_decay=0.05, eval_every=0),
        }
        if name not in presets:
            raise ValueError(f"unknown training preset {name!r}; known: {', '.join(presets)}")
        return replace(presets[name], **{k: v for k, v in overrides.items() if v is not None})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_text(t: TextFeatures) -> TextFeatures:
    """All processes' features, with gradients flowing back to each process's own share."""
    from torch.distributed.nn.functional import all_gather

    return TextFeatures(
        torch.cat(all_gather(t.sentence)), torch.cat(all_gather(t.words)), torch.cat(all_gather(t.word_mask))
    )


def _gather_video(v: VideoFeatures) -> VideoFeatures:
    from torch.distributed.nn.functional import all_gather

    return VideoFeatures(torch.cat(all_gather(v.frames)), torch.cat(all_gather(v.frame_mask)))


def _lr_lambda(total: int, warmup: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def _param_groups(model: RetrievalModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    clip_ids = {id(p) for p in model.clip_parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        # Biases, norms and scalars are not decayed, as in CLIP and X-CLIP.
        groups.setdefault((id(p) in clip_ids, p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.lr_clip if is_clip else cfg.lr_new,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (is_clip, decay), params in groups.items()
    ]


def _rsum(metrics: dict[str, Any]) -> float:
    t2v = metrics["t2v"]
    return t2v["R1"] + t2v["R5"] + t2v["R10"]


def train(
    model_config: ModelConfig,
    cfg: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    clip_weights: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains, validates every `eval_every` steps (or epoch) and keeps `out_dir/best` chosen on val.

    `out_dir/last` plus `trainer_state.pt` hold what `resume` needs.
    """
    out_dir = Path(out_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = _world()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    # The same seed in every process: the model must start identical everywhere (the data order is
    # split by DistributedSampler and captions are drawn per (seed, epoch, video), not from this RNG).
    _seed_everything(cfg.seed)

    splits = training_splits(Path(data_dir))
    train_corpus, val_corpus = splits.train, splits.val
    if splits.carved is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / VAL_SPLIT, {"carved_from_train": splits.carved})
    state_path = out_dir / STATE
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        model = load_checkpoint(out_dir / "last", expect=model_config)
    else:
        model = RetrievalModel(model_config, clip_weights=clip_weights)
    model.to(device).train()
    cache = FrameCache(
        Path(cache_dir) if cache_dir else Path(data_dir) / ".cache" / "frames",
        model_config.num_frames,
        model.image_size,
    )
    dataset = VideoTextTrainDataset(train_corpus, model_config.num_frames, model.image_size, cache, seed=cfg.seed)
    sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    per_process = max(1, cfg.batch_size // world)
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=per_process,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(dataset) >= 2 * per_process,  # a batch of one has no negatives
        collate_fn=collate_skip_bad,
        num_workers=cfg.num_workers,
        generator=loader_gen,
    )
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, max(1, int(cfg.warmup * total))))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = loss_for(model_config)
    tokenizer = model.tokenizer()

    step, best, history = 0, -1.0, {"train": [], "val": []}
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best, history = state["step"], state["best"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from step %d (best val rsum %.2f)", step, best)

    eval_every = cfg.eval_every or steps_per_epoch
    stop = min(total, cfg.stop_after) if cfg.stop_after else total
    dropped = 0
    bar = tqdm(total=stop, initial=step, desc="train", unit="step", disable=not progress or rank != 0)
    start = time.perf_counter()
    while step < stop:
        epoch = step // steps_per_epoch
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch)  # resumable: the epoch fixes the order
        skip = step - epoch * steps_per_epoch  # batches of this epoch already trained on
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            if batch is None or step >= stop:
                continue  # a batch of bad videos only (counted in dataset.skipped)
            dropped += batch["num_dropped"]
            tokens = tokenizer(batch["caption"])
            # Cut to the longest caption only in one process: gathered features need one length everywhere.
            tokens = (trim_tokens(tokens) if world == 1 else tokens).to(device)
            frames, mask = batch["frames"].to(device), batch["frame_mask"].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                text = model.encode_text(tokens)
                video = model.encode_video(frames, mask)
                if world > 1:
                    text, video = _gather_text(text), _gather_video(video)
                losses = loss_fn(model.head(text, video))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if world > 1:
                for p in model.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
            record.update({k: float(v.detach()) for k, v in losses.items()})
            history["train"].append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", best=f"{best:.1f}")
            if step % eval_every == 0 or step == stop:
                best = _validate(model, val_corpus, cache, out_dir, step, best, history, rank)
                _save_state(model, optimizer, scheduler, out_dir, step, best, history, rank)
            if step >= stop:
                break
    bar.close()
    if rank == 0:
        plot_training_curve(history, out_dir / "training_curve.png")
    summary = {
        "steps": step,
        "best_val_rsum": best,
        "seconds": round(time.perf_counter() - start, 1),
        "dropped_items": dropped,
        "skipped_videos": sorted(dataset.skipped),
        "val_videos": len(val_corpus.videos),
        "val_carved_from_train": splits.carved is not None,
        "best_checkpoint": str(out_dir / "best"),
        "train_config": asdict(cfg),
    }
    if rank == 0:
        atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _validate(
    model: RetrievalModel,
    corpus: Corpus,
    cache: FrameCache,
    out_dir: Path,
    step: int,
    best: float,
    history: dict[str, list],
    rank: int,
) -> float:
    if rank != 0:
        return best
    metrics = evaluate_model(model, corpus, cache)
    score = _rsum(metrics)
    history["val"].append({"step": step, **{f"t2v_{k}": v for k, v in metrics["t2v"].items()}, "rsum": score})
    log.info("step %d: val t2v R1 %.1f R5 %.1f R10 %.1f", step, *(metrics["t2v"][k] for k in ("R1", "R5", "R10")))
    if score > best:
        save_checkpoint(model, out_dir / "best", metadata={"step": step, "val": metrics["t2v"]})
        return score
    return best


def _save_state(model, optimizer, scheduler, out_dir: Path, step: int, best: float, history, rank: int) -> None:
    if rank != 0:
        return
    save_checkpoint(model, out_dir / "last", metadata={"step": step})
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best": best,
        "history": history,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(out_dir / STATE, lambda path: torch.save(state, path))
