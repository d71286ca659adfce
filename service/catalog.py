"""The catalog: a frame store plus its candidate index, changed together and persisted together.

The directory layout and the build are in `service/catalog_build.py` (its names are re-exported
here). A change (`put_video`, `delete_video`) is logged first, then applied to the store, then to
the in-memory candidate index: after a crash, replaying the log against the store gives the same
state.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.candidates import CandidateIndex
from service.catalog_build import (
    CHANGES_FILE,
    IDS_FILE,
    INDEX_FILE,
    LOCAL_STORE_DIR,
    IndexInfo,
    StoreSpec,
    build_catalog,
    flock,
    fold_changes,
    read_index_json,
)
from service.index import FrameIndex
from service.metadata import Filter, Metadata, compile_filter
from service.stores.base import FrameBatch, FrameStore, StoreManifest, coerce_video
from service.stores.local import LocalStore
from service.stores.redis_store import RedisStore

__all__ = [
    "CHANGES_FILE",
    "IDS_FILE",
    "INDEX_FILE",
    "Catalog",
    "IndexInfo",
    "LiveCatalog",
    "StoreSpec",
    "build_catalog",
    "read_index_json",
]

log = logging.getLogger(__name__)


_VERSIONS = itertools.count()
JOURNAL_MAX = 100_000  # changes kept for followers (the resident corpus); older ones mean a rebuild
FILTER_CACHE = 64  # filters whose matching ids are kept, per catalog, until the next change


class Catalog:
    """What the search service uses, its only door to stored videos: frames by id, candidates by
    query, changes that persist."""

    def __init__(self, index_dir: Path, info: IndexInfo, store: FrameStore, candidates: CandidateIndex) -> None:
        self.index_dir = Path(index_dir)
        self.info = info
        self.params = info.index
        self.generation_dir = self.index_dir / info.generation
        self.store = store
        self.candidates = candidates
        self._log_offset = 0
        self._write_lock = threading.Lock()
        self._writer: IO[bytes] | None = None
        self._writer_lock: Any = None
        self._options: dict[str, Any] = {}
        # Every change (put, delete, replayed line) takes a new version from one process-wide counter,
        # so a compacted catalog (same object, new generation) never repeats an earlier version.
        self.version = next(_VERSIONS)
        self._journal: list[tuple[int, str, str]] = []  # (version, op, video id), the last JOURNAL_MAX
        self._journal_start = self.version  # the journal holds every change after this version
        self.metadata: dict[str, Metadata] = {}  # non-empty metadata of the catalog's videos
        self._matches: dict[str, frozenset[str]] = {}  # filter key -> ids, cleared by every change

    @classmethod
    def open(
        cls,
        index_dir: Path,
        expected: StoreManifest | None = None,
        redis_url: str | None = None,
        mmap: bool = True,
        overfetch: int | None = None,
    ) -> Catalog:
        """Opens the live generation; with `expected`, refuses features of another model.

        `redis_url` replaces the URL recorded at build time (which carries no password).
        `overfetch`: vectors fetched per wanted video on the first try (default: the vectors per
        video, F for frame vectors, the segment count for segments, so that one fetch nearly always suffices).
        """
        index_dir = Path(index_dir)
        info = IndexInfo.read(index_dir)
        manifest = info.manifest
        if expected is not None:
            manifest.check(expected, f"index {index_dir}")
        generation = index_dir / info.generation
        spec = info.store
        if spec.backend == "local":
            store: FrameStore = LocalStore.open(generation / LOCAL_STORE_DIR, readonly=False)
        else:
            store = RedisStore.connect(redis_url or spec.url or "", spec.prefix, spec.cluster)
        try:
            store.check_compatible(expected or manifest)
            params = info.index
            base_ids = json.loads((generation / IDS_FILE).read_text())
            base = FrameIndex.load(generation, params, mmap=mmap)
            per_video = min(params.segments, manifest.frames) if params.vectors == "segments" else manifest.frames
            candidates = CandidateIndex(
                base,
                base_ids,
                manifest.dim,
                exact=params.exact,
                overfetch=overfetch or per_video,
                vectors=params.vectors,
                segments=params.segments,
            )
            catalog = cls(index_dir, info, store, candidates)
            catalog._options = {"redis_url": redis_url, "mmap": mmap, "overfetch": overfetch}
            catalog.metadata = {v: m for v, m in store.all_metadata().items() if v in candidates}
            catalog._replay()
        except BaseException:
            store.close()
            raise
        return catalog

    # ------------------------------------------------------------------------- the change log

    def _replay(self) -> None:
        """Applies log lines written since the last replay (at open, and on refresh)."""
        path = self.generation_dir / CHANGES_FILE
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        last = fold_changes(data[:end])
        self._log_offset += end
        puts = [v for v, op in last.items() if op == "put"]
        for video_id, op in last.items():
            if op == "del":
                self.candidates.remove(video_id)
                self.metadata.pop(video_id, None)
        present = [v for v in puts if v in self.store]
        for start in range(0, len(present), 512):
            chunk = present[start : start + 512]
            self.candidates.add_many(chunk, self.store.get(chunk))
        touched = [v for v, op in last.items() if op in ("put", "meta") and v in self.candidates]
        for video_id, meta in zip(touched, self.store.get_metadata(touched), strict=True):
            self._set_meta(video_id, meta)
        self._journal_add([(op, video_id) for video_id, op in last.items() if op != "meta"])
        if last:  # refresh replays every few seconds: keep the cached matches when nothing changed
            self._matches.clear()
        if last:
            log.info("catalog %s: replayed %d change(s)", self.index_dir, len(last))

    def _journal_add(self, changes: Sequence[tuple[str, str]]) -> None:
        """Records (op, video id) changes under a new version (called with the write lock held)."""
        if not changes:
            return
        self.version = next(_VERSIONS)
        self._journal.extend((self.version, op, video_id) for op, video_id in changes)
        if len(self._journal) > JOURNAL_MAX:
            del self._journal[: len(self._journal) - JOURNAL_MAX]
            self._journal_start = self._journal[0][0] - 1  # it holds every change after this version

    def changes_since(self, version: int) -> list[tuple[str, str]] | None:
        """(op, video id) of every change after `version`, oldest first; None when the journal does
        not reach back that far (the follower must start again from the whole catalog)."""
        with self._write_lock:
            if version < self._journal_start:
                return None
            return [(op, video_id) for v, op, video_id in self._journal if v > version]

    def _ensure_writer(self) -> IO[bytes]:
        """Takes the single-writer lock of this generation (once), then opens the log for appending."""
        if self._writer is None:
            lock = flock(self.generation_dir / "changes.lock", f"writing to catalog {self.index_dir}")
            lock.__enter__()
            self._writer_lock = lock
            self._replay()  # another writer may have logged before we got the lock
            self._writer = open(self.generation_dir / CHANGES_FILE, "ab")
            self._writer.truncate(self._log_offset)  # a torn last line
            self._repair()
        return self._writer

    def _repair(self) -> None:
        """What a crash left half-done, mended by the writer only (a reader could race with it
        putting the same id back): deletes logged but not done in the store, and, in a local store
        (which this generation owns), puts stored whose log line was never written: never
        acknowledged, so dropped. A Redis prefix may be shared, so there only the log is trusted."""
        if isinstance(self.store, LocalStore):
            stray = sorted(set(self.store.ids()) - set(self.candidates.ids()))
        else:
            stray = [v for v, op in self._logged_ops().items() if op == "del" and v in self.store]
        for video_id in stray:
            self.store.delete(video_id)
        if stray:
            log.warning("catalog %s: removed %d video(s) a crash left half-written", self.index_dir, len(stray))

    def _logged_ops(self) -> dict[str, str]:
        """The last operation per video id among the log lines read so far."""
        with open(self.generation_dir / CHANGES_FILE, "rb") as f:
            return fold_changes(f.read(self._log_offset))

    def written_changes(self) -> dict[str, str]:
        """`_logged_ops()` when this process is the generation's writer, else nothing: a hot reload
        carries these into the next generation, and only the replica that made them should."""
        return self._logged_ops() if self._writer is not None else {}

    def _set_meta(self, video_id: str, meta: Metadata) -> None:
        if meta:
            self.metadata[video_id] = meta
        else:
            self.metadata.pop(video_id, None)

    def _log(self, op: str, video_id: str) -> None:
        self._writer = self._ensure_writer()
        self._writer.write((json.dumps([op, video_id]) + "\n").encode())
        self._writer.flush()
        os.fsync(self._writer.fileno())
        self._log_offset = self._writer.tell()

    # ------------------------------------------------------------------------- the API

    @property
    def manifest(self) -> StoreManifest:
        return self.store.manifest

    @property
    def generation(self) -> str:
        return self.info.generation

    def search_candidates(
        self, queries: np.ndarray, k: int, allowed: frozenset[str] | None = None
    ) -> list[tuple[list[str], np.ndarray]]:
        """Per query [Nq, D]: (video ids, candidate scores), best first, k of them (fewer if the catalog
        is smaller); with `allowed` (from `matching`), among those videos only."""
        return self.candidates.search(queries, k, allowed)

    def get_frames(self, ids: Sequence[str]) -> FrameBatch:
        """Frames, masks and times of `ids`, in their order."""
        return self.store.get(ids)

    def get_unordered(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames, mask, order): `ids`' frames in the store's order, row r holding `ids[order[r]]`
        (one copy fewer than `get_frames`; see FrameStore.get_unordered)."""
        return self.store.get_unordered(ids)

    def has_frames(self, video_id: str) -> bool:
        """Whether the store holds frames for `video_id` (the catalog, `in`, decides what is a video)."""
        return video_id in self.store

    def ping(self) -> None:
        """Raises StoreUnavailable when the frame store cannot be reached."""
        self.store.ping()

    def preload(self) -> int:
        """Faults the store's frames into memory; returns the bytes touched (0 where there is nothing to do)."""
        return self.store.preload()

    def put_video(self, video_id: str, frames: Any, mask: Any, times: Any, metadata: Metadata | None = None) -> None:
        """Adds or replaces a video (and its metadata: None, none) in the store and the candidate index."""
        frames, mask, times = coerce_video(self.manifest, frames, mask, times)
        with self._write_lock:
            # Store first, then the log line: a reader replaying the line always finds the new frames.
            self._ensure_writer()
            self.store.put_many([video_id], frames[None], mask[None], times[None], [metadata or {}])
            self._log("put", video_id)
            self.candidates.add_many([video_id], FrameBatch(frames[None], mask[None], times[None]))
            self._set_meta(video_id, metadata or {})
            self._matches.clear()
            self._journal_add([("put", video_id)])

    def set_metadata(self, video_id: str, metadata: Metadata) -> bool:
        """Replaces a video's metadata, frames untouched; False when the catalog does not hold it."""
        with self._write_lock:
            if video_id not in self.candidates:
                return False
            self._ensure_writer()
            if not self.store.set_metadata(video_id, metadata):
                return False
            self._log("meta", video_id)
            self._set_meta(video_id, metadata)
            self._matches.clear()
            return True

    def get_metadata(self, ids: Sequence[str]) -> list[Metadata]:
        """Each id's metadata ({} where none), from memory: the catalog keeps it for filters anyway."""
        return [self.metadata.get(i, {}) for i in ids]

    def matching(self, where: Filter) -> frozenset[str]:
        """The ids of the videos whose metadata satisfies `where` (cached until the next change)."""
        key = where.key()
        with self._write_lock:
            found = self._matches.get(key)
            if found is not None:
                return found
            test = compile_filter(where)
            empty: Metadata = {}
            found = frozenset(v for v in self.candidates.ids() if test(self.metadata.get(v, empty)))
            if len(self._matches) >= FILTER_CACHE:
                self._matches.pop(next(iter(self._matches)))
            self._matches[key] = found
            return found

    def delete_video(self, video_id: str) -> bool:
        """Removes a video from both; False when the catalog did not hold it."""
        with self._write_lock:
            indexed, stored = video_id in self.candidates, video_id in self.store
            if not (indexed or stored):
                return False
            # Log first: once the line is written, no reader will put the video back in its index.
            self._ensure_writer()
            self._log("del", video_id)
            self.store.delete(video_id)
            self.candidates.remove(video_id)
            self.metadata.pop(video_id, None)
            self._matches.clear()
            self._journal_add([("del", video_id)])
            return True

    def refresh(self) -> None:
        """Picks up changes another process made (its log lines and store writes)."""
        with self._write_lock:
            if isinstance(self.store, LocalStore):
                self.store.refresh()
            self._replay()

    def ids(self) -> list[str]:
        return self.candidates.ids()

    def __len__(self) -> int:
        return len(self.candidates)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.candidates

    def compact(self, progress: bool = False) -> dict[str, Any]:
        """Rebuilds the index from the current store as a new generation (the delta and the
        tombstones fold in, a local store drops its dead rows) and switches this catalog to it."""
        with self._write_lock:
            info = build_catalog(self.store, self.index_dir, self.params, self.info.store, progress=progress)
        fresh = Catalog.open(self.index_dir, **self._options)
        self.close()
        self.__dict__.update(fresh.__dict__)
        return info

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self._writer_lock.__exit__(None, None, None)
            if self.candidates.base is not None:
                self.candidates.base.close()
            self.store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveCatalog:
    """The one owner of the generation being served. Readers take `current` once per unit of work
    (a search batch, a request), so each sees one generation; a hot reload `swap`s in the next."""

    def __init__(self, catalog: Catalog) -> None:
        self._current = catalog

    @property
    def current(self) -> Catalog:
        return self._current

    def swap(self, fresh: Catalog) -> Catalog:
        """Makes `fresh` live; returns the catalog it replaces (still open: the caller retires it)."""
        old, self._current = self._current, fresh
        return old
