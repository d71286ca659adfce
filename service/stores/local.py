"""The embedded frame store: memory-mapped fp16 shards on disk, no server.

Layout of a store directory:

    store.json          manifest + current generation (replaced atomically)
    g0001-00000.rows    append-only shard: fixed-size records (frames fp16 [F, D], mask [F], times [F])
    g0001.journal       append-only id map: JSON lines ["p", id, shard, row(, metadata)] / ["d", id]
                        / ["m", id, metadata] (metadata changed, frames kept)
    writer.lock         flock held by the one process that writes

A put appends records to the current shard (fsync), then their journal lines (fsync): the journal
is the commit point, so a crash leaves at worst records no line points to, and a torn last line
is ignored. Metadata lives in the journal lines (and in memory), so it is as durable as the
id map and compaction carries it over. Replacing a video appends a new record and leaves the old one dead; a delete is a
journal line (a tombstone). `compact()` copies the live records into a new generation and
switches `store.json` to it, so a crash mid-compaction leaves the old generation in use.

Reads gather rows from read-only memory maps (page cache), so a few hundred ids cost a few
hundred small copies and no system call per id.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from model.io import atomic_write_json, fsync_dir
from service.stores.base import (
    FrameBatch,
    FrameStore,
    StoreManifest,
    StoreMismatch,
    StoreUnavailable,
    VideoNotFound,
    check_video_id,
    coerce_video,
    metadata_list,
)
from service.stores.local_layout import (
    STORE_FILE,
    DamagedLine,
    StoreBusy,
    Writer,
    apply_lines,
    delete_line,
    field_views,
    gather_bytes,
    init_store,
    last_shard,
    meta_line,
    prefault,
    put_line,
    read_meta,
    remove_other_generations,
    row_dtype,
    set_meta,
    writer_lock,
)

__all__ = ["LocalStore", "StoreBusy"]

log = logging.getLogger(__name__)


class LocalStore(FrameStore):
    def __init__(self, path: Path, readonly: bool = True, durable: bool = True) -> None:
        """Opens an existing store; see `create` and `open_or_create` for new ones."""
        self.path = Path(path)
        self.description = str(self.path)
        self.readonly = readonly
        self.durable = durable  # fsync every write; off only for throwaway stores (benchmarks)
        self._lock = threading.RLock()
        self._scratch = threading.local()  # get_unordered's per-thread buffer
        self._writer: Writer | None = None
        self._load_state()

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def create(
        cls, path: Path, manifest: StoreManifest, shard_rows: int | None = None, durable: bool = True
    ) -> LocalStore:
        init_store(Path(path), manifest.to_dict(), row_dtype(manifest.frames, manifest.dim).itemsize, shard_rows)
        return cls(path, readonly=False, durable=durable)

    @classmethod
    def open(cls, path: Path, readonly: bool = True, durable: bool = True) -> LocalStore:
        return cls(path, readonly=readonly, durable=durable)

    @classmethod
    def open_or_create(cls, path: Path, manifest: StoreManifest, durable: bool = True) -> LocalStore:
        """The store at `path`, which must match `manifest`, or a new empty one."""
        if (Path(path) / STORE_FILE).exists():
            store = cls(path, readonly=False, durable=durable)
            try:
                store.check_compatible(manifest)
            except StoreMismatch:
                store.close()
                raise
            return store
        return cls.create(path, manifest, durable=durable)

    def _load_state(self) -> None:
        meta = read_meta(self.path)
        self._manifest = StoreManifest.from_dict(meta["manifest"])
        self._generation = int(meta["generation"])
        self._shard_rows = int(meta["shard_rows"])
        self._dtype = row_dtype(self._manifest.frames, self._manifest.dim)
        self._loc: dict[str, tuple[int, int]] = {}
        self._meta: dict[str, dict[str, Any]] = {}  # non-empty metadata only
        self._maps: dict[int, np.memmap] = {}
        self._journal_offset = 0
        self._dead = 0
        self._rows_seen = 0
        self._replay()

    def _shard_path(self, shard: int, generation: int | None = None) -> Path:
        return self.path / f"g{self._generation if generation is None else generation:04d}-{shard:05d}.rows"

    def _journal_path(self, generation: int | None = None) -> Path:
        return self.path / f"g{self._generation if generation is None else generation:04d}.journal"

    def _replay(self) -> None:
        """Applies journal lines written since the last replay; a torn last line waits."""
        try:
            with open(self._journal_path(), "rb") as f:
                f.seek(self._journal_offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        try:
            rows, dead = apply_lines(data[:end], self._loc, self._meta)
        except DamagedLine as exc:
            raise StoreMismatch(f"{self._journal_path()}: {exc} after offset {self._journal_offset}") from exc
        self._rows_seen += rows
        self._dead += dead
        self._journal_offset += end

    def refresh(self) -> None:
        """Picks up what another process wrote (new journal lines, or a compaction)."""
        with self._lock:
            if self._writer is not None:
                return  # the writer's own state is always current
            if int(read_meta(self.path)["generation"]) != self._generation:
                self._load_state()
            else:
                self._replay()

    # ----------------------------------------------------------------------------- writing

    def _ensure_writer(self) -> Writer:
        if self._writer is not None:
            return self._writer
        if self.readonly:
            raise PermissionError(f"frame store {self.path} is open read-only")
        lock = writer_lock(self.path)
        if int(read_meta(self.path)["generation"]) != self._generation:
            self._load_state()
        self._replay()
        remove_other_generations(self.path, self._generation)
        journal = open(self._journal_path(), "ab")
        journal.truncate(self._journal_offset)  # drop a torn last line
        shard = last_shard(self.path, self._generation)
        shard_file = open(self._shard_path(shard), "ab")
        rows = shard_file.tell() // self._dtype.itemsize
        shard_file.truncate(rows * self._dtype.itemsize)  # a torn record no line points to
        self._writer = Writer(lock, journal, shard, shard_file, rows)
        return self._writer

    def _sync(self, f: IO[bytes]) -> None:
        f.flush()
        if self.durable:
            os.fsync(f.fileno())

    def put_many(
        self, ids: Sequence[str], frames: Any, mask: Any, times: Any, metadata: Sequence[dict] | None = None
    ) -> None:
        ids = [check_video_id(i) for i in ids]
        frames, mask, times = coerce_video(self._manifest, frames, mask, times, n=len(ids))
        metas = metadata_list(metadata, len(ids))
        if not ids:
            return
        records = np.empty(len(ids), dtype=self._dtype)
        records["frames"], records["mask"], records["times"] = frames, mask, times
        with self._lock:
            w = self._ensure_writer()
            placed: list[tuple[int, int]] = []
            start = 0
            while start < len(ids):
                if w.rows >= self._shard_rows:
                    self._sync(w.shard_file)
                    w.shard_file.close()
                    w.shard, w.rows = w.shard + 1, 0
                    w.shard_file = open(self._shard_path(w.shard), "ab")
                take = min(self._shard_rows - w.rows, len(ids) - start)
                w.shard_file.write(records[start : start + take].tobytes())
                placed += [(w.shard, w.rows + j) for j in range(take)]
                w.rows += take
                start += take
            self._sync(w.shard_file)  # records before the lines that point at them
            lines = "".join(put_line(i, *where, m) for i, where, m in zip(ids, placed, metas, strict=True))
            w.journal.write(lines.encode())
            self._sync(w.journal)
            self._journal_offset = w.journal.tell()
            for video_id, where, meta in zip(ids, placed, metas, strict=True):
                self._dead += self._loc.get(video_id) is not None
                self._loc[video_id] = where
                set_meta(self._meta, video_id, meta)
            self._rows_seen += len(ids)

    def delete(self, video_id: str) -> bool:
        with self._lock:
            if video_id not in self._loc:
                return False
            w = self._ensure_writer()
            w.journal.write(delete_line(video_id).encode())
            self._sync(w.journal)
            self._journal_offset = w.journal.tell()
            del self._loc[video_id]
            self._meta.pop(video_id, None)
            self._dead += 1
            return True

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> bool:
        with self._lock:
            if video_id not in self._loc:
                return False
            w = self._ensure_writer()
            w.journal.write(meta_line(video_id, metadata).encode())
            self._sync(w.journal)
            self._journal_offset = w.journal.tell()
            set_meta(self._meta, video_id, dict(metadata))
            return True

    def get_metadata(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(self._meta.get(i, {})) for i in ids]

    def all_metadata(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._meta)

    def compact(self) -> int:
        """Rewrites the live records into a new generation; returns the rows reclaimed."""
        with self._lock:
            self._ensure_writer()
            reclaimed = self._dead
            generations = (self._generation, self._generation + 1)  # (old, new), for the log line
            new_generation = generations[1]
            order = list(self._loc)
            new_loc: dict[str, tuple[int, int]] = {}
            journal_lines: list[str] = []
            for start in range(0, len(order), self._shard_rows):
                chunk = order[start : start + self._shard_rows]
                shard = start // self._shard_rows
                with open(self._shard_path(shard, new_generation), "wb") as f:
                    for sub in range(0, len(chunk), 4096):
                        f.write(self._gather(chunk[sub : sub + 4096]).tobytes())
                    self._sync(f)
                for row, video_id in enumerate(chunk):
                    new_loc[video_id] = (shard, row)
                    journal_lines.append(put_line(video_id, shard, row, self._meta.get(video_id, {})))
            with open(self._journal_path(new_generation), "wb") as f:
                f.write("".join(journal_lines).encode())
                self._sync(f)
            fsync_dir(self.path)
            meta = read_meta(self.path)
            meta["generation"] = new_generation
            atomic_write_json(self.path / STORE_FILE, meta)  # the switch
            self._writer.close()  # type: ignore[union-attr]
            self._writer = None
            self._load_state()
            self._ensure_writer()  # removes the old generation's files
            log.info("compacted %s: generation %d -> %d, %d dead rows reclaimed", self.path, *generations, reclaimed)
            return reclaimed

    # ----------------------------------------------------------------------------- reading

    def _map(self, shard: int, need_rows: int) -> np.memmap:
        mm = self._maps.get(shard)
        if mm is None or mm.shape[0] < need_rows:
            path = self._shard_path(shard)
            rows = os.path.getsize(path) // self._dtype.itemsize
            if rows < need_rows:
                raise StoreMismatch(f"{path} holds {rows} records, its journal points at row {need_rows - 1}")
            mm = np.memmap(path, dtype=self._dtype, mode="r", shape=(rows,))
            self._maps[shard] = mm
        return mm

    def preload(self) -> int:
        """Maps every shard and faults its pages in (`prefault`)."""
        with self._lock:
            rows: dict[int, int] = {}
            for shard, row in self._loc.values():
                rows[shard] = max(rows.get(shard, 0), row + 1)
            return sum(prefault(self._map(shard, need)) for shard, need in sorted(rows.items()))

    def _locate(self, ids: Sequence[str]) -> list[tuple[np.ndarray, np.memmap, np.ndarray]]:
        """Per shard: positions in `ids`, the shard's mapped records and those videos' rows (ascending),
        caller holding the lock."""
        locs = [self._loc.get(i) for i in ids]
        missing = [i for i, where in zip(ids, locs, strict=True) if where is None]
        if missing:
            raise VideoNotFound(missing)
        if not ids:
            return []
        where = np.asarray(locs, dtype=np.int64)  # [n, 2] (shard, row)
        out = []
        for shard in np.unique(where[:, 0]):
            sel = np.flatnonzero(where[:, 0] == shard)
            rows = where[sel, 1]
            order = np.argsort(rows, kind="stable")  # ascending offsets: sequential-ish page reads
            out.append((sel[order], self._map(int(shard), int(rows.max()) + 1), rows[order]))
        return out

    def _gather(self, ids: Sequence[str]) -> np.ndarray:
        """The records of `ids` (structured array), caller holding the lock."""
        out = np.empty(len(ids), dtype=self._dtype)
        for sel, records, rows in self._locate(ids):
            out[sel] = records[rows]
        return out

    def get_unordered(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole records gathered shard by shard, ascending rows, into this thread's buffer (reused:
        fresh pages fault, and the narrowing asks for 256 videos at a time per query); frames and
        mask are strided views of it. One copy where `get` makes two (field gather, then reorder)."""
        ids = list(ids)
        raw = getattr(self._scratch, "raw", None)
        if raw is None or len(raw) < len(ids):
            raw = self._scratch.raw = np.empty((max(len(ids), 1), self._dtype.itemsize), np.uint8)
        order, k = [], 0
        with self._lock:
            for sel, records, rows in self._locate(ids):
                gather_bytes(records, rows, raw[k : k + len(rows)])
                order.append(sel)
                k += len(rows)
        frames, mask = field_views(raw[:k], self._dtype)
        return frames, mask, np.concatenate(order) if order else np.zeros(0, np.int64)

    def get(self, ids: Sequence[str]) -> FrameBatch:
        """Each field copied once, straight from the mapped records (no whole-record copy first)."""
        ids = list(ids)
        f, d = self._manifest.frames, self._manifest.dim
        frames = np.empty((len(ids), f, d), np.float16)
        mask, times = np.empty((len(ids), f), bool), np.empty((len(ids), f), np.float32)
        with self._lock:
            for sel, records, rows in self._locate(ids):
                frames[sel] = records["frames"][rows]
                mask[sel], times[sel] = records["mask"][rows], records["times"][rows]
        return FrameBatch(frames, mask, times)

    # ----------------------------------------------------------------------------- the rest

    @property
    def manifest(self) -> StoreManifest:
        return self._manifest

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._loc)

    def __len__(self) -> int:
        return len(self._loc)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._loc

    def stats(self) -> dict[str, Any]:
        size = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
        return {
            "videos": len(self._loc),
            "dead_rows": self._dead,
            "disk_bytes": size,
            "generation": self._generation,
            "record_bytes": self._dtype.itemsize,
        }

    def ping(self) -> None:
        if not (self.path / STORE_FILE).is_file():
            raise StoreUnavailable(f"frame store {self.path} is gone (no {STORE_FILE})")

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._maps.clear()
