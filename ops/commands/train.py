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
    "towers_epochs",
    "head_lr_clip",
)


# From scratch: a ResNet of width 8 (model/configs); on the shapes style every head reached 2-4x the
# R@1 of the ViT glccl-tiny, and the demo's top-3 check 42% against 14% (docs/training.md)
DEFAULT_BACKBONE = "glccl-tiny-rn"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model on a dataset layout")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (MSR-VTT, DiDeMo, VATEX or JSONL layout)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (best/, last/, curves)")
    add_model_options(p)
    add_budget_options(p)
    p.add_argument("--clip-weights", type=Path, default=None, help="local open_clip checkpoint to start from")
    p.add_argument(
        "--towers-data",
        type=Path,
        default=None,
        help="from scratch: warm the towers up on this corpus instead of --data (any layout; for example "
        "clips that each show what their captions say, as glccl synth's events/)",
    )
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
    a.add_argument("--seeds", type=int, default=1, help="train every head with this many seeds (seed, seed+1, ...)")
    add_model_options(a, head=False, sweep=True)
    add_budget_options(a)
    a.set_defaults(func=run_ablate)


def add_model_options(p: argparse.ArgumentParser, head: bool = True, sweep: bool = False) -> None:
    if head:
        p.add_argument("--head", default="glccl", help="similarity head (glccl, glccl_nocsc, xclip, xpool, ...)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="open_clip model name (ViT-B-32 for real CLIP)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--words", type=int, default=32)
    many = {"nargs": "+"} if sweep else {}
    also = "; several values: each is tried for GLCCL on validation and the best kept" if sweep else ""
    p.add_argument("--csc-weight", type=float, default=None, help="CSC loss weight (default 0.1)" + also, **many)
    p.add_argument(
        "--tau-g",
        type=float,
        default=None,
        help="GLIM temperature (default 5, as the paper, with CLIP weights; 50 from scratch)" + also,
        **many,
    )
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
    p.add_argument(
        "--towers-epochs",
        type=int,
        default=None,
        help="from scratch: epochs warming the towers up with mean pooling before the head (0: none)",
    )
    p.add_argument(
        "--head-lr-clip",
        type=float,
        default=None,
        help="from scratch: the towers' learning rate while the head trains (default: the preset's)",
    )
    p.add_argument("--device", default=None, help="auto, cpu or cuda")


def _configs(args: argparse.Namespace, head: str):
    from model.glccl import make_config
    from model.train import TrainConfig

    for name in ("frames", "words"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name} must be at least 2")
    overrides: dict[str, float] = {} if args.csc_weight is None else {"csc_weight": args.csc_weight}
    from model.recipe import SCRATCH_LOGIT_SCALE, SCRATCH_TAU_G

    # A pretrained CLIP arrives with its logit scale at 100 and the feature scale tau_g = 5 assumes;
    # towers trained from scratch start at 1/0.07, as CLIP did, and GLIM's temperature follows their
    # scale (see model/recipe.py).
    from_scratch = getattr(args, "clip_weights", None) is None
    tau_g = (
        args.tau_g if args.tau_g is not None else (SCRATCH_TAU_G if from_scratch and head.startswith("glccl") else None)
    )
    if tau_g is not None:
        if tau_g <= 0:
            raise ValueError("--tau-g must be positive")
        overrides["tau_g"] = tau_g
    scale = (
        args.logit_scale_init if args.logit_scale_init is not None else (SCRATCH_LOGIT_SCALE if from_scratch else None)
    )
    if scale is not None:
        overrides["logit_scale_init"] = scale
    model_config = make_config(head, args.backbone, num_frames=args.frames, max_words=args.words, **overrides)
    train_config = TrainConfig.preset(args.preset, **{k: getattr(args, k) for k in TRAIN_OPTIONS})
    return model_config, train_config


def run_train(args: argparse.Namespace) -> int:
    from model.recipe import train_model

    model_config, train_config = _configs(args, args.head)
    if args.towers_data is not None and not args.towers_data.exists():
        raise FileNotFoundError(f"--towers-data {args.towers_data} does not exist")
    summary = train_model(
        model_config,
        train_config,
        args.data,
        args.out,
        resume=args.resume,
        clip_weights=args.clip_weights,
        towers_data=args.towers_data,
    )
    print(json.dumps({k: summary[k] for k in ("steps", "best_val_rsum", "seconds", "best_checkpoint")}))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import load_checkpoint
    from model.data.datasets import load_corpus, training_splits
    from model.data.video import FrameCache
    from model.device import resolve_device
    from model.evaluate import evaluate_model
    from ops.commands.tables import format_table

    model = load_checkpoint(args.checkpoint).to(resolve_device(args.device))
    # train and val as training saw them: a layout without a val split has one carved from train
    corpus = load_corpus(args.data, "test") if args.split == "test" else getattr(training_splits(args.data), args.split)
    cache = FrameCache(args.data / ".cache" / "frames", model.config.num_frames, model.image_size)
    with torch.no_grad():
        metrics = evaluate_model(model, corpus, cache, progress=True)
    metrics["checkpoint"], metrics["split"] = str(args.checkpoint), args.split
    print(format_table({"": metrics}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from ops.commands.ablate import ablate

    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    sweeps = {"csc_weights": args.csc_weight, "tau_gs": args.tau_g}
    single = argparse.Namespace(**{**vars(args), "csc_weight": None, "tau_g": None})
    if args.tau_g and len(args.tau_g) == 1:
        single.tau_g = args.tau_g[0]
    result = ablate(args.data, args.out, lambda head: _configs(single, head), args.heads, args.seeds, **sweeps)
    print(result["markdown"])
    if result["sweep"]:
        print(f"chosen on validation: {result['sweep']['chosen']}")
    return 0
