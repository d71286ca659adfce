"""An index directory's layout, and `build_catalog`, which writes a new generation into it.

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

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from model.io import atomic_write_json, fsync_dir
from service.index import IndexParams, build_shards
from service.stores.base import FrameStore, StoreManifest, StoreMismatch
from service.stores.local import LocalStore, StoreBusy
from service.stores.redis_store import DEFAULT_PREFIX, RedisStore, redact_url

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
IDS_FILE = "ids.json"
CHANGES_FILE = "changes.log"
LOCAL_STORE_DIR = "store"  # the local frame store, inside its generation
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
            return {"backend": "local", "path": LOCAL_STORE_DIR}
        return {"backend": "redis", "url": redact_url(self.url or ""), "prefix": self.prefix, "cluster": self.cluster}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> StoreSpec:
        if spec["backend"] == "local":
            return cls()
        return cls("redis", spec["url"], spec.get("prefix", DEFAULT_PREFIX), bool(spec.get("cluster")))


@dataclass(frozen=True)
class IndexInfo:
    """What index.json says about an index directory: its live generation and what that holds."""

    generation: str  # gen-NNNNNN, the folder of the live generation
    manifest: StoreManifest  # the features: dimension, frames, dtype, checkpoint hash
    index: IndexParams  # how the candidate index was built (nlist as chosen at build time)
    store: StoreSpec  # where the frames are (a Redis URL without its password)
    videos: int
    vectors: int
    build_seconds: float
    created: str  # UTC, ISO 8601

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> IndexInfo:
        return cls(
            generation=info["generation"],
            manifest=StoreManifest.from_dict(info["manifest"]),
            index=IndexParams.from_dict(info["index"]),
            store=StoreSpec.from_dict(info["store"]),
            videos=int(info.get("videos", 0)),
            vectors=int(info.get("vectors", 0)),
            build_seconds=float(info.get("build_seconds", 0.0)),
            created=str(info.get("created", "")),
        )

    @classmethod
    def read(cls, index_dir: Path) -> IndexInfo:
        return cls.from_dict(read_index_json(index_dir))

    def to_dict(self) -> dict[str, Any]:
        """index.json's content."""
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "manifest": self.manifest.to_dict(),
            "index": self.index.to_dict(),
            "store": self.store.to_dict(),
            "videos": self.videos,
            "vectors": self.vectors,
            "build_seconds": self.build_seconds,
            "created": self.created,
        }


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


def fold_changes(log_lines: bytes) -> dict[str, str]:
    """changes.log's lines folded: the last operation per video id ("put", "del" or "meta"), in the order of those last
    operations. The last op wins (the store already holds its outcome), except that a "meta"
    after a "put" stays a "put": the video's frames changed too."""
    last: dict[str, str] = {}
    for line in log_lines.splitlines():
        op, video_id = json.loads(line)
        previous = last.pop(video_id, None)
        last[video_id] = "put" if op == "meta" and previous == "put" else op
    return last


@contextmanager
def flock(path: Path, what: str) -> Iterator[IO[bytes]]:
    f = open(path, "ab")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusy(f"{what} is held by another process ({path})") from None
        yield f
    finally:
        f.close()


def generations(index_dir: Path) -> list[str]:
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

    The frames and their metadata are copied into the target store (a new local store inside the generation, or
    Redis under the prefix) in the same pass that fills the FAISS shards. A Redis prefix that
    already holds features of another model is refused.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with flock(index_dir / ".build.lock", f"a build of {index_dir}"):
        for stale in index_dir.glob(".tmp-gen-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-gen-"))
        target: FrameStore | None = None
        try:
            if store.backend == "local":
                target = LocalStore.create(tmp / LOCAL_STORE_DIR, source.manifest)
            elif isinstance(source, RedisStore) and (source.prefix, source.cluster) == (store.prefix, store.cluster):
                target = None  # rebuilding over the frames already in Redis (compaction)
            else:
                target = RedisStore.connect(store.url or "", store.prefix, store.cluster, manifest=source.manifest)
            ids = source.ids()
            copy = (
                None
                if target is None
                else (
                    lambda chunk, batch: target.put_many(
                        chunk, batch.frames, batch.mask, batch.times, source.get_metadata(chunk)
                    )
                )
            )
            stats = build_shards(source, ids, tmp, params, batch_size=batch_size, on_batch=copy, progress=progress)
            (tmp / IDS_FILE).write_text(json.dumps(ids))
            (tmp / CHANGES_FILE).touch()
            if target is not None:
                target.close()
                target = None
            fsync_dir(tmp)
            existing = generations(index_dir)
            number = int(existing[-1][4:]) + 1 if existing else 1
            generation = f"gen-{number:06d}"
            os.rename(tmp, index_dir / generation)
            fsync_dir(index_dir)
            info = IndexInfo(
                generation=generation,
                manifest=source.manifest,
                index=dataclasses.replace(params, nlist=stats["nlist"] or params.nlist),
                store=store,
                videos=stats["videos"],
                vectors=stats["vectors"],
                build_seconds=round(time.perf_counter() - started, 3),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            ).to_dict()
            atomic_write_json(index_dir / INDEX_FILE, info)  # the switch
        except BaseException:
            if target is not None:
                target.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Keep the previous generation for readers that still map it; drop the older ones.
        for old in generations(index_dir)[:-2]:
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
