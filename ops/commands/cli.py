"""The `glccl` command: one subcommand per offline job, benchmark or service."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module adds its subcommands with add_parser(subparsers) and keeps heavy imports (torch)
# inside its run functions, so `glccl --help` stays quick.
COMMAND_MODULES = (
    "ops.commands.synth",
    "ops.commands.train",
    "ops.commands.extract",
    "ops.commands.index",
    "ops.commands.serve",
    "ops.commands.export_text",
    "ops.commands.demo",
    "ops.commands.bench",
    "ops.load.loadtest",
    "ops.load.faults",
    "ops.load.soak",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glccl", description="GLCCL text-to-video search")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        # Errors a user can fix (bad paths, bad checkpoints, bad data): one line, no traceback.
        logging.getLogger("glccl").debug("failure", exc_info=True)
        print(f"glccl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
