"""The local store's files: their names, the store description (STORE_FILE), the fixed-size record,
the writer's open files, reading records as bytes, and faulting a mapped file's pages in (see
service/stores/local.py for how they are used)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.stores.base import StoreMismatch

MADV_POPULATE_READ = 22  # linux/mman.h: populate (prefault) page tables, readable
PAGE = 4096

STORE_FILE = "store.json"
LOCK_FILE = "writer.lock"
KIND = "glccl-local-frames"
SHARD_BYTES = 1 << 30  # rows per shard file chosen so that a shard stays near 1 GiB
FILE_RE = re.compile(r"^g(\d{4,})(?:-(\d{5})\.rows|\.journal)$")


class StoreBusy(OSError):
    """Another process holds the store's writer lock."""


def read_meta(path: Path) -> dict[str, Any]:
    """The store's STORE_FILE: its kind, manifest, generation and shard size."""
    file = Path(path) / STORE_FILE
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a frame store (no {STORE_FILE})") from None
    except json.JSONDecodeError as exc:
        raise StoreMismatch(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise StoreMismatch(f"{file} does not describe a local frame store")
    return meta


def row_dtype(frames: int, dim: int) -> np.dtype:
    """One packed record per video version; fixed size, so a row number is a byte offset."""
    return np.dtype([("frames", "<f2", (frames, dim)), ("mask", "?", (frames,)), ("times", "<f4", (frames,))])


class Writer:
    def __init__(self, lock: IO[bytes], journal: IO[bytes], shard: int, shard_file: IO[bytes], rows: int) -> None:
        self.lock, self.journal, self.shard, self.shard_file, self.rows = lock, journal, shard, shard_file, rows

    def close(self) -> None:
        for f in (self.shard_file, self.journal, self.lock):
            f.close()  # closing the lock file releases the flock


def prefault(mapped: np.memmap) -> int:
    """Faults every page of a read-only memory map into this process; returns its size in bytes.

    A page is otherwise faulted on a query's first read of it, and in the VMs we serve on a 12 KB
    record's first read costs ~6-24 us against ~1.5 us once mapped: a pool of 1,000 unseen videos
    added ~20 ms to a query."""
    raw = mapped.view(np.uint8)
    try:
        raw._mmap.madvise(MADV_POPULATE_READ)  # type: ignore[attr-defined]  # one call, Linux >= 5.14
    except (AttributeError, OSError, ValueError):
        int(raw[::PAGE].sum())  # one byte per page
    return raw.nbytes


def gather_bytes(records: np.memmap, rows: np.ndarray, out: np.ndarray) -> None:
    """Whole records `rows` of a mapped shard into `out` [len(rows), itemsize] (uint8). As bytes a
    record is one contiguous row, so this is a plain gather; np.take on the structured fields is ~70x
    slower."""
    np.take(records.view(np.uint8).reshape(len(records), records.dtype.itemsize), rows, axis=0, out=out)


def field_views(raw: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """frames [n, F, D] (fp16) and mask [n, F] as strided views of n records of `row_dtype` held as
    bytes [n, itemsize]: no copy."""
    (frames, at_frames), at_mask = dtype.fields["frames"], dtype.fields["mask"][1]
    n, size = len(raw), dtype.itemsize
    f, d = frames.shape
    base = raw.reshape(-1)
    return (
        np.ndarray((n, f, d), np.float16, base, at_frames, (size, d * 2, 2)),
        np.ndarray((n, f), np.bool_, base, at_mask, (size, 1)),
    )
