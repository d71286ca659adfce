"""`glccl extract`: video files -> frame features in a local store (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.data.datasets import LAYOUTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract frame features from video files into a feature store",
        description="Decode each video, encode its frames with the checkpoint's CLIP image tower and "
        "temporal transformer, and store V (fp16 [F, D]) with its frame mask and timestamps. "
        "Resumable: videos already in FEATURES_DIR are skipped. Undecodable videos are reported, "
        "skipped and counted in FEATURES_DIR/extract.json.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root, a JSONL manifest, or a folder of videos")
    p.add_argument("--out", type=Path, required=True, help="features directory (created, or resumed)")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    p.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="dataset layout of --data")
    p.add_argument("--videos-dir", type=Path, default=None, help="where the video files are (default: DATA/videos)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in this process)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--frame-cache", type=Path, default=None, help="reuse decoded clips from this folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        print("glccl extract: error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.workers < 0:
        print("glccl extract: error: --workers must be at least 0", file=sys.stderr)
        return 2
    from service.extract import extract_features  # torch and the model load only when extracting

    summary = extract_features(
        args.checkpoint,
        args.data,
        args.out,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        layout=args.layout,
        videos_dir=args.videos_dir,
        frame_cache=args.frame_cache,
        progress=not args.no_progress,
    )
    shown = {k: v for k, v in summary.to_dict().items() if k != "failed"}
    print(json.dumps(shown))
    if summary.videos == 0:
        print(f"glccl extract: error: no video could be extracted ({summary.failed_count} failed)", file=sys.stderr)
        return 1
    return 0
