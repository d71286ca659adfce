"""The local store's files: their names, the store description (STORE_FILE), the fixed-size record,
the writer's open files, reading records as bytes, and faulting a mapped file's pages in (see
service/stores/local.py for how they are used)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import IO, Any

import numpy as np

from model.io import atomic_write_json
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


def init_store(path: Path, manifest: dict[str, Any], record_bytes: int, shard_rows: int | None) -> None:
    """Writes a new, empty store's STORE_FILE into `path`, which must be new or empty."""
    if (path / STORE_FILE).exists():
        raise FileExistsError(f"{path} already holds a frame store")
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty; choose a new directory for the frame store")
    path.mkdir(parents=True, exist_ok=True)
    rows = shard_rows if shard_rows is not None else max(1, SHARD_BYTES // record_bytes)
    if rows < 1:
        raise ValueError("shard_rows must be at least 1")
    atomic_write_json(path / STORE_FILE, {"kind": KIND, "manifest": manifest, "generation": 1, "shard_rows": rows})


def writer_lock(path: Path) -> IO[bytes]:
    """The store's writer lock, held (flock) until the file is closed; StoreBusy when another has it."""
    lock = open(path / LOCK_FILE, "ab")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreBusy(f"frame store {path} is being written by another process") from None
    return lock


def last_shard(path: Path, generation: int) -> int:
    """The highest shard number of `generation` (0 when it has none yet)."""
    shards = [
        int(m.group(2))
        for m in map(FILE_RE.match, os.listdir(path))
        if m and m.group(2) and int(m.group(1)) == generation
    ]
    return max(shards, default=0)


def remove_other_generations(path: Path, generation: int) -> None:
    """Files of a finished compaction's old generation, or of one that crashed half-way."""
    for name in os.listdir(path):
        m = FILE_RE.match(name)
        if m and int(m.group(1)) != generation:
            (path / name).unlink(missing_ok=True)


class DamagedLine(ValueError):
    """A journal line that is not one of ours."""


# The journal: JSON lines ["p", id, shard, row(, metadata)] (put), ["m", id, metadata] (metadata
# changed, frames kept), ["d", id] (delete); the last line for an id wins.


def put_line(video_id: str, shard: int, row: int, metadata: dict[str, Any]) -> str:
    return json.dumps(["p", video_id, shard, row, *([metadata] if metadata else [])]) + "\n"


def meta_line(video_id: str, metadata: dict[str, Any]) -> str:
    return json.dumps(["m", video_id, metadata]) + "\n"


def delete_line(video_id: str) -> str:
    return json.dumps(["d", video_id]) + "\n"


def set_meta(meta: dict[str, dict[str, Any]], video_id: str, metadata: dict[str, Any]) -> None:
    """Keeps only non-empty metadata."""
    if metadata:
        meta[video_id] = metadata
    else:
        meta.pop(video_id, None)


def apply_lines(data: bytes, loc: dict[str, tuple[int, int]], meta: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Applies whole journal lines to the id map and the metadata; returns (puts, rows made dead)."""
    puts = dead = 0
    for number, line in enumerate(data.splitlines()):
        try:
            rec = json.loads(line)
            if rec[0] == "p":
                dead += loc.get(rec[1]) is not None
                loc[rec[1]] = (int(rec[2]), int(rec[3]))
                set_meta(meta, rec[1], rec[4] if len(rec) > 4 else {})
                puts += 1
            elif rec[0] == "m":
                if rec[1] in loc:
                    set_meta(meta, rec[1], rec[2])
            elif rec[0] == "d":
                dead += loc.pop(rec[1], None) is not None
                meta.pop(rec[1], None)
            else:
                raise ValueError(f"unknown record {rec[0]!r}")
        except (ValueError, IndexError, TypeError) as exc:
            raise DamagedLine(f"damaged line {number + 1}: {exc}") from exc
    return puts, dead


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
