"""The catalog: a frame store plus its candidate index, changed together and persisted together.

An index directory:

    index.json            the manifest and the pointer to the live generation (replaced atomically)
    gen-000002/           the live generation
        ids.json          base video ids, by video number
        shard-000.faiss   FAISS shards over the base videos' frames (memory-mapped when opened)
        store/            the local frame store (local backend only; Redis holds the frames otherwise)
        changes.log       puts and deletes since the build, JSON lines, replayed at open
    gen-000001/           the previous generation, kept for readers that still have it open

A build writes a new generation into a temporary directory, renames it into place and only then
replaces index.json: a build that dies half-way leaves the previous generation live. A change
(`put_video`, `delete_video`) is logged first, then applied to the store, then to the in-memory
candidate index: after a crash, replaying the log against the store gives the same state.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.candidates import CandidateIndex
from service.index import FrameIndex, IndexParams, build_shards
from service.stores.base import (
    FrameBatch,
    FrameStore,
    StoreManifest,
    StoreMismatch,
    atomic_write_json,
    coerce_video,
    fsync_dir,
)
from service.stores.local import LocalStore, StoreBusy
from service.stores.redis_store import DEFAULT_PREFIX, RedisStore, redact_url

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
IDS_FILE = "ids.json"
CHANGES_FILE = "changes.log"
KIND = "glccl-index"
FORMAT_VERSION = 1
_GEN_RE = re.compile(r"^gen-(\d{6})$")


@dataclass(frozen=True)
class StoreSpec:
    backend: str = "local"  # local | redis
    url: str | None = None  # redis URL (redis://host:port/db); its password is never written to disk
    prefix: str = DEFAULT_PREFIX  # redis key prefix
    cluster: bool = False  # the URL names one node of a Redis Cluster

    def __post_init__(self) -> None:
        if self.backend not in ("local", "redis"):
            raise ValueError(f"unknown store backend {self.backend!r}; expected local or redis")
        if self.backend == "redis" and not self.url:
            raise ValueError("the redis store needs a URL (--redis-url)")

    def to_dict(self) -> dict[str, Any]:
        if self.backend == "local":
            return {"backend": "local", "path": "store"}
        return {"backend": "redis", "url": redact_url(self.url or ""), "prefix": self.prefix, "cluster": self.cluster}


def read_index_json(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / INDEX_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{index_dir} holds no index ({INDEX_FILE} missing); build one with `glccl index build`"
        ) from None
    except json.JSONDecodeError as exc:
        raise StoreMismatch(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise StoreMismatch(f"{path} does not describe a glccl index")
    if info.get("format_version") != FORMAT_VERSION:
        raise StoreMismatch(f"{path}: index format {info.get('format_version')}, this code reads {FORMAT_VERSION}")
    return info


@contextmanager
def _flock(path: Path, what: str) -> Iterator[IO[bytes]]:
    f = open(path, "ab")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusy(f"{what} is held by another process ({path})") from None
        yield f
    finally:
        f.close()


def _generations(index_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(index_dir).iterdir() if p.is_dir() and _GEN_RE.match(p.name))


def build_catalog(
    source: FrameStore,
    index_dir: Path,
    params: IndexParams,
    store: StoreSpec,
    progress: bool = False,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Builds a new generation from every video in `source` and makes it live; returns index.json.

    The frames are copied into the target store (a new local store inside the generation, or
    Redis under the prefix) in the same pass that fills the FAISS shards. A Redis prefix that
    already holds features of another model is refused.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _flock(index_dir / ".build.lock", f"a build of {index_dir}"):
        for stale in index_dir.glob(".tmp-gen-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-gen-"))
        target: FrameStore | None = None
        try:
            if store.backend == "local":
                target = LocalStore.create(tmp / "store", source.manifest)
            elif isinstance(source, RedisStore) and (source.prefix, source.cluster) == (store.prefix, store.cluster):
                target = None  # rebuilding over the frames already in Redis (compaction)
            else:
                target = RedisStore.connect(store.url or "", store.prefix, store.cluster, manifest=source.manifest)
            ids = source.ids()
            copy = (
                None
                if target is None
                else (lambda chunk, batch: target.put_many(chunk, batch.frames, batch.mask, batch.times))
            )
            stats = build_shards(source, ids, tmp, params, batch_size=batch_size, on_batch=copy, progress=progress)
            (tmp / IDS_FILE).write_text(json.dumps(ids))
            (tmp / CHANGES_FILE).touch()
            if target is not None:
                target.close()
                target = None
            fsync_dir(tmp)
            existing = _generations(index_dir)
            number = int(existing[-1][4:]) + 1 if existing else 1
            generation = f"gen-{number:06d}"
            os.rename(tmp, index_dir / generation)
            fsync_dir(index_dir)
            info = {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "generation": generation,
                "manifest": source.manifest.to_dict(),
                "index": {**params.to_dict(), "nlist": stats["nlist"] or params.nlist},
                "store": store.to_dict(),
                "videos": stats["videos"],
                "vectors": stats["vectors"],
                "build_seconds": round(time.perf_counter() - started, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            atomic_write_json(index_dir / INDEX_FILE, info)  # the switch
        except BaseException:
            if target is not None:
                target.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Keep the previous generation for readers that still map it; drop the older ones.
        for old in _generations(index_dir)[:-2]:
            shutil.rmtree(index_dir / old, ignore_errors=True)
    log.info(
        "built %s: %d videos, %d vectors, %s, %.1fs",
        index_dir,
        info["videos"],
        info["vectors"],
        params.kind,
        info["build_seconds"],
    )
    return info


class Catalog:
    """What the search service uses: frames by id, candidates by query, changes that persist."""

    def __init__(self, index_dir: Path, info: dict[str, Any], store: FrameStore, candidates: CandidateIndex) -> None:
        self.index_dir = Path(index_dir)
        self.info = info
        self.params = IndexParams.from_dict(info["index"])
        self.generation_dir = self.index_dir / info["generation"]
        self.store = store
        self.candidates = candidates
        self._log_offset = 0
        self._write_lock = threading.Lock()
        self._writer: IO[bytes] | None = None
        self._writer_lock: Any = None
        self._options: dict[str, Any] = {}

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
        info = read_index_json(index_dir)
        manifest = StoreManifest.from_dict(info["manifest"])
        if expected is not None:
            manifest.check(expected, f"index {index_dir}")
        generation = index_dir / info["generation"]
        spec = info["store"]
        if spec["backend"] == "local":
            store: FrameStore = LocalStore.open(generation / spec["path"], readonly=False)
        else:
            store = RedisStore.connect(redis_url or spec["url"], spec["prefix"], bool(spec["cluster"]))
        try:
            store.check_compatible(expected or manifest)
            params = IndexParams.from_dict(info["index"])
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
        last: dict[str, str] = {}
        for line in data[:end].splitlines():
            op, video_id = json.loads(line)
            last.pop(video_id, None)
            last[video_id] = op  # last op wins; the store already holds its outcome
        self._log_offset += end
        puts = [v for v, op in last.items() if op == "put"]
        for video_id, op in last.items():
            if op == "del":
                self.candidates.remove(video_id)
        present = [v for v in puts if v in self.store]
        for start in range(0, len(present), 512):
            chunk = present[start : start + 512]
            self.candidates.add_many(chunk, self.store.get(chunk))
        if last:
            log.info("catalog %s: replayed %d change(s)", self.index_dir, len(last))

    def _ensure_writer(self) -> IO[bytes]:
        """Takes the single-writer lock of this generation (once), then opens the log for appending."""
        if self._writer is None:
            lock = _flock(self.generation_dir / "changes.lock", f"writing to catalog {self.index_dir}")
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
            return {video_id: op for op, video_id in map(json.loads, f.read(self._log_offset).splitlines())}

    def written_changes(self) -> dict[str, str]:
        """`_logged_ops()` when this process is the generation's writer, else nothing: a hot reload
        carries these into the next generation, and only the replica that made them should."""
        return self._logged_ops() if self._writer is not None else {}

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

    def search_candidates(self, queries: np.ndarray, k: int) -> list[tuple[list[str], np.ndarray]]:
        """Per query [Nq, D]: (video ids, candidate scores), best first, k of them (fewer if the catalog is smaller)."""
        return self.candidates.search(queries, k)

    def get_frames(self, ids: Sequence[str]) -> FrameBatch:
        return self.store.get(ids)

    def put_video(self, video_id: str, frames: Any, mask: Any, times: Any) -> None:
        """Adds or replaces a video in the store and the candidate index."""
        frames, mask, times = coerce_video(self.manifest, frames, mask, times)
        with self._write_lock:
            # Store first, then the log line: a reader replaying the line always finds the new frames.
            self._ensure_writer()
            self.store.put_many([video_id], frames[None], mask[None], times[None])
            self._log("put", video_id)
            self.candidates.add_many([video_id], FrameBatch(frames[None], mask[None], times[None]))

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
            spec = self.info["store"]
            target = StoreSpec(
                backend=spec["backend"],
                url=spec.get("url"),
                prefix=spec.get("prefix", DEFAULT_PREFIX),
                cluster=bool(spec.get("cluster")),
            )
            info = build_catalog(self.store, self.index_dir, self.params, target, progress=progress)
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
