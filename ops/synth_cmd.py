"""`glccl synth`: write a synthetic MSR-VTT-layout corpus (mp4 videos + captions) for training and tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.data.synth import SynthConfig, check_out_dir, generate_corpus


def add_parser(subparsers) -> None:
    """Add the `synth` subcommand to the `glccl` CLI's subparsers."""
    defaults = SynthConfig()
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic MSR-VTT-layout corpus of mp4 videos and captions",
        description="Deterministic synthetic corpus: videos of 2-4 shape events, captions describing "
        "part of each video, hard-negative siblings. Same seed, same files.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (absent, empty, or a corpus)")
    p.add_argument("--videos", type=int, default=defaults.videos, help="number of videos")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument("--size", type=int, default=defaults.size, help="frame width/height in pixels (even)")
    p.add_argument("--fps", type=int, default=defaults.fps, help="frame rate of the mp4s")
    p.add_argument("--frames-per-event", type=int, default=defaults.frames_per_event)
    p.add_argument("--min-events", type=int, default=defaults.min_events)
    p.add_argument("--max-events", type=int, default=defaults.max_events)
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    p.add_argument(
        "--eval-captions", type=int, default=defaults.eval_captions, help="evaluation captions per test/val video"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _fail(message: str) -> None:
    # argparse's parser.error style: one line on stderr, exit status 2.
    print(f"glccl synth: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    try:
        config = SynthConfig(
            videos=args.videos,
            seed=args.seed,
            size=args.size,
            fps=args.fps,
            frames_per_event=args.frames_per_event,
            min_events=args.min_events,
            max_events=args.max_events,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            eval_captions=args.eval_captions,
        )
        check_out_dir(args.out)
    except (ValueError, OSError) as e:
        _fail(str(e))
    summary = generate_corpus(args.out, config, progress=not args.no_progress)
    print(
        f"synth: {summary['videos']} videos (train {summary['train']}, val {summary['val']}, "
        f"test {summary['test']}), {summary['captions']} captions, {summary['event_clips']} event clips "
        f"-> {summary['out']}"
    )
    return 0
