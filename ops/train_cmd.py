"""`glccl train`, `glccl evaluate` and `glccl ablate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_OPTIONS = (
    "stop_after",
    "epochs",
    "max_steps",
    "batch_size",
    "lr_new",
    "lr_clip",
    "eval_every",
    "seed",
    "device",
    "num_workers",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model on a dataset layout")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (MSR-VTT, DiDeMo, VATEX or JSONL layout)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (best/, last/, curves)")
    add_model_options(p)
    add_budget_options(p)
    p.add_argument("--clip-weights", type=Path, default=None, help="local open_clip checkpoint to start from")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("evaluate", help="retrieval metrics of a checkpoint on a split")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--json", type=Path, default=None, help="write the metrics here")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=run_evaluate)

    a = subparsers.add_parser("ablate", help="train and test every head with the same budget and seed")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True, help="folder for the runs and the table")
    a.add_argument("--heads", nargs="+", default=None)
    a.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="first train a meanP backbone this long; every head then fine-tunes from its CLIP towers",
    )
    a.add_argument(
        "--pretrain-data",
        type=Path,
        default=None,
        help="corpus to pretrain on (default --data); glccl synth writes single-event clips to DATA/events",
    )
    add_model_options(a, head=False)
    add_budget_options(a)
    a.set_defaults(func=run_ablate)


def add_model_options(p: argparse.ArgumentParser, head: bool = True) -> None:
    if head:
        p.add_argument("--head", default="glccl", help="similarity head (glccl, glccl_nocsc, xclip, xpool, ...)")
    p.add_argument("--backbone", default="glccl-tiny", help="open_clip model name (ViT-B-32 for real CLIP)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--words", type=int, default=32)
    p.add_argument("--csc-weight", type=float, default=None, help="override the head's CSC loss weight")
    p.add_argument("--tau-g", type=float, default=None, help="GLIM temperature (default 5, as the paper)")
    p.add_argument(
        "--logit-scale-init",
        type=float,
        default=None,
        help="log of the initial logit scale (default: log(100) with CLIP weights, log(1/0.07) from scratch)",
    )


def add_budget_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="training settings: tiny (from scratch) or published")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap on the whole run's steps")
    p.add_argument("--stop-after", type=int, default=None, help="end at this step (resume later with --resume)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr-new", type=float, default=None)
    p.add_argument("--lr-clip", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=None, help="steps between validations (default: each epoch)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda")


def _configs(args: argparse.Namespace, head: str):
    from model.glccl import make_config
    from model.train import TrainConfig

    for name in ("frames", "words"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name} must be at least 2")
    overrides: dict[str, float] = {} if args.csc_weight is None else {"csc_weight": args.csc_weight}
    if args.tau_g is not None:
        if args.tau_g <= 0:
            raise ValueError("--tau-g must be positive")
        overrides["tau_g"] = args.tau_g
    # A pretrained CLIP arrives with its logit scale at 100; a tower trained from scratch starts at
    # 1/0.07, as CLIP itself did: 100 on random features blows the first steps' gradients up.
    from_scratch = getattr(args, "clip_weights", None) is None
    scale = args.logit_scale_init if args.logit_scale_init is not None else (2.6593 if from_scratch else None)
    if scale is not None:
        overrides["logit_scale_init"] = scale
    model_config = make_config(head, args.backbone, num_frames=args.frames, max_words=args.words, **overrides)
    train_config = TrainConfig.preset(args.preset, **{k: getattr(args, k) for k in TRAIN_OPTIONS})
    return model_config, train_config


def run_train(args: argparse.Namespace) -> int:
    from model.train import train

    model_config, train_config = _configs(args, args.head)
    summary = train(model_config, train_config, args.data, args.out, resume=args.resume, clip_weights=args.clip_weights)
    print(json.dumps({k: summary[k] for k in ("steps", "best_val_rsum", "seconds", "best_checkpoint")}))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import load_checkpoint
    from model.data.datasets import load_corpus
    from model.data.video import FrameCache
    from model.evaluate import evaluate_model
    from model.train import _device

    model = load_checkpoint(args.checkpoint).to(_device(args.device))
    corpus = load_corpus(args.data, args.split)
    cache = FrameCache(args.data / ".cache" / "frames", model.config.num_frames, model.image_size)
    with torch.no_grad():
        metrics = evaluate_model(model, corpus, cache, progress=True)
    metrics["checkpoint"], metrics["split"] = str(args.checkpoint), args.split
    print(format_table({"": metrics}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def format_table(rows: dict[str, dict]) -> str:
    """A markdown table: raw text-to-video and video-to-text figures, then DSL text-to-video."""
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    head = "| run | " + " | ".join(f"t2v {k}" for k in keys) + " | " + " | ".join(f"v2t {k}" for k in keys)
    head += " | DSL t2v R1 |"
    lines = [head, "|" + "---|" * (2 + 2 * len(keys))]
    for name, m in rows.items():
        cells = [f"{m['t2v'][k]:.1f}" for k in keys] + [f"{m['v2t'][k]:.1f}" for k in keys]
        dsl = f"{m['dsl']['t2v']['R1']:.1f}" if "dsl" in m else "-"
        lines.append(f"| {name or m.get('checkpoint', '')} | " + " | ".join(cells) + f" | {dsl} |")
    return "\n".join(lines)


def run_ablate(args: argparse.Namespace) -> int:
    from ops.ablate import ablate

    result = ablate(args, _configs)
    print(result["markdown"])
    return 0
