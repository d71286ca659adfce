"""`glccl synth`: write a synthetic MSR-VTT-layout corpus (mp4 videos + captions) for training and tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.data.synth import SynthConfig, check_out_dir, generate_corpus
from model.data.synth_sprites import SpritesConfig, generate_sprites

# style -> (config class, generator); "shapes" is the corpus the project develops on, "sprites" one
# it never tunes on (other vocabulary, renderer, frame rate, lengths and phrasing; no val csv)
STYLES = {"shapes": (SynthConfig, generate_corpus), "sprites": (SpritesConfig, generate_sprites)}


def add_parser(subparsers) -> None:
    """Add the `synth` subcommand to the `glccl` CLI's subparsers."""
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic MSR-VTT-layout corpus of mp4 videos and captions",
        description="Deterministic synthetic corpus: videos of several events, captions describing "
        "part of each video, hard-negative siblings. Same style and seed, same files. Defaults depend "
        "on the style (shapes: 600 videos, 8 fps, val csv and events/; sprites: 1500 videos, 12 fps, "
        "events of 6-14 frames, no val csv, as the public MSR-VTT layout).",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (absent, empty, or a corpus)")
    p.add_argument("--style", choices=sorted(STYLES), default="shapes", help="vocabulary and renderer")
    p.add_argument("--videos", type=int, default=None, help="number of videos")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--size", type=int, default=None, help="frame width/height in pixels (even)")
    p.add_argument("--fps", type=int, default=None, help="frame rate of the mp4s")
    p.add_argument("--frames-per-event", type=int, default=None, help="shapes style only")
    p.add_argument("--min-events", type=int, default=None, help="shapes style only")
    p.add_argument("--max-events", type=int, default=None, help="shapes style only")
    p.add_argument("--events", type=int, default=None, help="sprites style only: events per video")
    p.add_argument("--test-fraction", type=float, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--eval-captions", type=int, default=None, help="evaluation captions per test/val video")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


OPTIONS = (
    "videos", "seed", "size", "fps", "frames_per_event", "min_events", "max_events", "events",
    "test_fraction", "val_fraction", "eval_captions",
)  # fmt: skip


def _fail(message: str) -> None:
    # argparse's parser.error style: one line on stderr, exit status 2.
    print(f"glccl synth: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    config_cls, generate = STYLES[args.style]
    known = set(config_cls.__dataclass_fields__)
    given = {k: v for k, v in vars(args).items() if k in OPTIONS and v is not None}
    foreign = sorted(k for k in given if k not in known)
    if foreign:
        _fail(f"--{foreign[0].replace('_', '-')} does not apply to style {args.style!r}")
    try:
        config = config_cls(**given)
        check_out_dir(args.out)
    except (ValueError, OSError) as e:
        _fail(str(e))
    summary = generate(args.out, config, progress=not args.no_progress)
    clips = f", {summary['event_clips']} event clips" if "event_clips" in summary else ""
    print(
        f"synth ({args.style}): {summary['videos']} videos (train {summary['train']}, val {summary['val']}, "
        f"test {summary['test']}), {summary['captions']} captions{clips} -> {summary['out']}"
    )
    return 0
