"""Atomic, durable file writes: readers see the old file or the new one, never a torn one, even
after a crash (faiss contrib's temp-file-then-`os.replace`, with the fsyncs that make it survive a
power cut)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(directory: Path) -> None:
    """Makes a rename or a new file in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], durable: bool = True) -> Path:
    """Writes `path` whole: `write(tmp)` fills a temporary file in the same folder, which is then
    fsynced, renamed over `path` (os.replace) and the folder fsynced. The temporary file is removed
    when `write` fails. `durable=False` skips the fsyncs, for caches that a torn entry cannot harm."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    """`data` as indented JSON with sorted keys (the layout every index and store file uses)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
