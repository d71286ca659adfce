"""`glccl demo`: synthetic corpus -> tiny model -> features -> index -> the service, each step kept for later runs."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("glccl.demo")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="build everything from scratch (kept for later runs) and serve it")
    p.add_argument("--dir", type=Path, default=Path("demo"), help="where the corpus, model, features and index go")
    p.add_argument("--videos", type=int, default=600, help="synthetic videos to generate")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of each stage (default: the tiny preset's towers, then head)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    p.set_defaults(func=run)


# The towers warm up on the corpus' single-event clips (glccl synth's events/: the train videos cut
# at their event boundaries, each clip with captions of its one event; the validation videos' clips
# choose the best epoch), then GLCCL trains on the full videos. Clips say which frames a caption
# describes, so the towers learn which colour goes with which shape; warmed up on the full videos
# (where a caption names one or two of 2-4 events) the top-3 check was 50-55%, on the clips 89% after
# 8 epochs and 92% after 12 (training seed 0; seeds 1 and 2: 72%, 81%; docs/training.md). 12 epochs
# of the 1,376 clips train in about the time 24 epochs of the 450 videos did (175-215 s on 2 cores).
DEMO_TOWERS_EPOCHS, DEMO_HEAD_EPOCHS = 12, 16
# The towers' rate while the head trains: 1e-3 against the preset's 3e-4 gave 89% against 79% on the
# clip-warmed towers (50-55% against 42% on video-warmed ones); not glccl train's default, because on
# the sprites style it cut GLCCL's test R@1 from 4.5 to 2.4 (seed 0; shapes: 20.3 at both rates).
DEMO_HEAD_LR_CLIP = 1e-3


def train_demo_model(paths: dict[str, Path], epochs: int | None = None) -> None:
    """GLCCL on the tiny backbone with `glccl train`'s own recipe from scratch (model/recipe.py), the
    towers warmed up with mean pooling on the corpus' event clips for DEMO_TOWERS_EPOCHS, then the head
    on the videos for DEMO_HEAD_EPOCHS, the towers at DEMO_HEAD_LR_CLIP; `epochs` replaces both counts.
    The same as `glccl train --data DIR --towers-data DIR/events --towers-epochs 12 --epochs 16
    --head-lr-clip 1e-3`."""
    from model.data.synth_events import EVENTS_DIR
    from model.glccl import make_config
    from model.recipe import SCRATCH_LOGIT_SCALE, SCRATCH_TAU_G, train_model
    from model.train import TrainConfig
    from ops.commands.train import DEFAULT_BACKBONE

    # glccl train's default backbone (why a convolutional tower: DEFAULT_BACKBONE, docs/training.md)
    config = make_config("glccl", DEFAULT_BACKBONE, logit_scale_init=SCRATCH_LOGIT_SCALE, tau_g=SCRATCH_TAU_G)
    towers, head = (epochs, epochs) if epochs else (DEMO_TOWERS_EPOCHS, DEMO_HEAD_EPOCHS)
    overrides = {"epochs": head, "towers_epochs": towers, "head_lr_clip": DEMO_HEAD_LR_CLIP}
    cfg = TrainConfig.preset("tiny", **overrides)
    train_model(config, cfg, paths["data"], paths["run"], towers_data=paths["data"] / EVENTS_DIR)


def check_demo_model(paths: dict[str, Path]) -> dict:
    """How often the top 3 of a one-event validation caption all show the named shape and colour
    (logged, and written to the run folder's top3_check.json)."""
    from model.checkpoint import load_checkpoint
    from model.data.synth_check import top_k_shows_named
    from model.io import atomic_write_json

    try:
        result = top_k_shows_named(load_checkpoint(paths["checkpoint"]), paths["data"], k=3)
    except ValueError as exc:  # a corpus too small to have such captions
        log.warning("demo: no top-3 check: %s", exc)
        return {}
    log.info(
        "demo: for %.0f%% of %d one-event validation captions the top 3 of %d videos all show the named "
        "shape and colour (per result: colour %.0f%%, shape %.0f%%, both in one event %.0f%%)",
        100 * result["share"],
        result["queries"],
        result["videos"],
        100 * result["results_with_colour"],
        100 * result["results_with_shape"],
        100 * result["results_with_both"],
    )
    atomic_write_json(paths["run"] / "top3_check.json", result)
    return result


def prepare(root: Path, videos: int = 600, epochs: int | None = None) -> dict[str, Path]:
    """Makes whatever of corpus, checkpoint, features and index is missing; returns their paths."""
    from model.data.synth import SynthConfig, generate_corpus
    from service.catalog import INDEX_FILE, StoreSpec, build_catalog
    from service.extract import extract_features
    from service.index import IndexParams
    from service.stores.local import LocalStore

    paths = {
        "data": root / "data",
        "run": root / "checkpoint",
        "checkpoint": root / "checkpoint" / "best",
        "features": root / "features",
        "index": root / "index",
    }
    steps = [
        ("corpus", paths["data"] / "MSRVTT_data.json"),
        ("model", paths["checkpoint"] / "config.json"),
        ("text encoder", paths["checkpoint"] / "text.onnx"),  # the service encodes queries with ONNX Runtime
        ("features", None),
        ("index", paths["index"] / INDEX_FILE),
    ]
    for name, done_marker in steps:
        start = time.perf_counter()
        if done_marker is not None and done_marker.exists():
            log.info("demo: %s already made (%s)", name, done_marker.parent)
            continue
        if name == "corpus":
            generate_corpus(paths["data"], SynthConfig(videos=videos, seed=0))
        elif name == "model":
            train_demo_model(paths, epochs)
            check_demo_model(paths)
        elif name == "text encoder":
            from model.checkpoint import load_checkpoint
            from model.onnx_text import export_text_onnx

            model = load_checkpoint(paths["checkpoint"]).eval()
            export_text_onnx(model.text, model.tokenizer(), paths["checkpoint"] / "text.onnx")
        elif name == "features":
            # resumable: a second run only extracts what is missing
            cache = paths["data"] / ".cache" / "frames"  # decoded during training already
            extract_features(paths["checkpoint"], paths["data"], paths["features"], split="all", frame_cache=cache)
        elif name == "index":
            build_catalog(LocalStore.open(paths["features"]), paths["index"], IndexParams(kind="flat"), StoreSpec())
        log.info("demo: %s ready in %.1f s", name, time.perf_counter() - start)
    return paths


def run(args: argparse.Namespace) -> int:
    if args.videos < 20:
        raise ValueError("--videos must be at least 20 (train, validation and test splits need videos)")
    paths = prepare(args.dir, args.videos, args.epochs)
    if args.no_serve:
        return 0
    import uvicorn

    from service.app import configure_logging, create_app
    from service.settings import Settings

    settings = Settings(
        checkpoint=paths["checkpoint"],
        index=paths["index"],
        media_dirs=[paths["data"] / "videos"],
        host=args.host,
        port=args.port,
        log_json=False,
    )
    configure_logging(json_logs=False)
    log.info("demo: serving at http://%s:%d", args.host, args.port)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
    return 0
