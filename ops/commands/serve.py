"""`glccl serve`: the HTTP service under uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve POST /search over HTTP (settings also from GLCCL_* variables)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (GLCCL_CHECKPOINT)")
    p.add_argument("--index", type=Path, default=None, help="index folder (GLCCL_INDEX)")
    p.add_argument("--host", default=None, help="GLCCL_HOST (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="GLCCL_PORT (default 8000)")
    p.add_argument("--redis-url", default=None, help="GLCCL_REDIS_URL, for an index whose frames live in Redis")
    p.add_argument("--media-dir", type=Path, action="append", default=None, help="folder of video files (repeatable)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace):
    from service.settings import Settings

    overrides = {
        "checkpoint": args.checkpoint,
        "index": args.index,
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
        "media_dirs": args.media_dir,
        "device": args.device,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import configure_logging, create_app

    settings = settings_from(args)
    for name, path in (("checkpoint", settings.checkpoint), ("index", settings.index)):
        if not Path(path).exists():
            raise FileNotFoundError(f"{name} {path} does not exist (set --{name} or GLCCL_{name.upper()})")
    configure_logging(settings.log_json)
    app = create_app(settings)
    # uvicorn handles SIGTERM: it stops accepting, lets requests in flight finish, then runs the
    # lifespan's shutdown (which drains the batcher).
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=15)
    return 0
