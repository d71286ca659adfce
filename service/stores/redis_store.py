"""The shared frame store: one Redis hash per video, on a standalone server or a Redis Cluster.

Keys, for prefix P (default "glccl:"):

    P v:<video id>      hash {frames: fp16 bytes [F, D], mask: uint8 [F], times: float32 [F],
                              meta: JSON object (absent: none)}
    {P}:manifest        JSON StoreManifest (written once, SET NX)
    {P}:ids             set of the video ids in the store

The two bookkeeping keys share the hash tag `{P}` so they live in one cluster slot; the video keys
carry no hash tag, so a cluster spreads them over every node. The ids set is the commit point: a
put writes the video hash first and then adds the id; a delete removes the id first and then the
hash. On a standalone server both steps run in one MULTI/EXEC; a cluster cannot run a transaction
across slots, so there the two steps are two ordered pipelines and a crash between them leaves at
worst an orphan hash that no id names.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.cluster import RedisCluster

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

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "glccl:"
PIPELINE_VIDEOS = 256  # videos per pipeline round trip: ~3 MiB of frames at D=512, F=12

T = TypeVar("T")


def redact_url(url: str) -> str:
    """The URL without its password, for logs and manifests."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _unavailable(method: Callable[..., T]) -> Callable[..., T]:
    """Connection failures become StoreUnavailable, naming the server."""

    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as exc:
            raise StoreUnavailable(f"redis frame store {self.description} is unreachable: {exc}") from exc

    return wrapper


class RedisStore(FrameStore):
    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        prefix: str = DEFAULT_PREFIX,
        manifest: StoreManifest | None = None,
        description: str = "redis",
    ) -> None:
        """Opens the store under `prefix`; with `manifest`, creates it if absent and checks it otherwise."""
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"redis prefix must be non-empty and free of braces, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.cluster = isinstance(client, RedisCluster)
        self.description = f"{description} prefix {prefix!r}"
        self._manifest_key = f"{{{prefix}}}:manifest"
        self._ids_key = f"{{{prefix}}}:ids"
        self._manifest = self._init_manifest(manifest)
        f, d = self._manifest.frames, self._manifest.dim
        self._sizes = (f * d * 2, f, f * 4)  # bytes of frames, mask, times

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        cluster: bool = False,
        manifest: StoreManifest | None = None,
        timeout_s: float = 5.0,
    ) -> RedisStore:
        """A store on the server (or cluster) at `url`, e.g. redis://host:6379/0."""
        try:
            if cluster:
                client: redis.Redis | RedisCluster = RedisCluster.from_url(
                    url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
                )
            else:
                client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
            raise StoreUnavailable(
                f"cannot reach redis {'cluster ' if cluster else ''}at {redact_url(url)}: {exc}"
            ) from exc
        except ValueError as exc:
            raise ValueError(f"bad redis URL {redact_url(url)!r}: {exc}") from exc
        kind = "cluster" if cluster else "server"
        try:
            return cls(client, prefix, manifest, description=f"{kind} {redact_url(url)}")
        except BaseException:
            client.close()
            raise

    @_unavailable
    def _init_manifest(self, manifest: StoreManifest | None) -> StoreManifest:
        if manifest is not None:
            # SET NX: of two builders racing, one writes and the other checks against it.
            self.client.set(self._manifest_key, json.dumps(manifest.to_dict(), sort_keys=True), nx=True)
        raw = self.client.get(self._manifest_key)
        if raw is None:
            raise StoreMismatch(f"no frame store on redis {self.description} (no key {self._manifest_key})")
        try:
            stored = StoreManifest.from_dict(json.loads(raw))
        except (json.JSONDecodeError, TypeError) as exc:
            raise StoreMismatch(f"{self._manifest_key} on {self.description} is not a store manifest: {exc}") from exc
        if manifest is not None:
            stored.check(manifest, f"frame store on {self.description}")
        return stored

    def _key(self, video_id: str) -> str:
        return f"{self.prefix}v:{video_id}"

    @property
    def manifest(self) -> StoreManifest:
        return self._manifest

    @_unavailable
    def put_many(
        self, ids: Sequence[str], frames: Any, mask: Any, times: Any, metadata: Sequence[dict] | None = None
    ) -> None:
        ids = [check_video_id(i) for i in ids]
        frames, mask, times = coerce_video(self._manifest, frames, mask, times, n=len(ids))
        metas = metadata_list(metadata, len(ids))
        for start in range(0, len(ids), PIPELINE_VIDEOS):
            chunk = range(start, min(start + PIPELINE_VIDEOS, len(ids)))
            chunk_ids = [ids[i] for i in chunk]
            # Standalone: one MULTI/EXEC, so readers see the hashes and the ids together.
            pipe = self.client.pipeline(transaction=not self.cluster)
            for i in chunk:
                mapping = {
                    "frames": frames[i].tobytes(),
                    "mask": mask[i].astype(np.uint8).tobytes(),
                    "times": times[i].tobytes(),
                }
                if metas[i]:
                    mapping["meta"] = json.dumps(metas[i]).encode()
                else:
                    pipe.hdel(self._key(ids[i]), "meta")  # a replaced video loses its old metadata
                pipe.hset(self._key(ids[i]), mapping=mapping)
            if self.cluster:
                pipe.execute()  # every hash written before any id names it
                pipe = self.client.pipeline(transaction=False)
            pipe.sadd(self._ids_key, *chunk_ids)
            pipe.execute()

    @_unavailable
    def delete(self, video_id: str) -> bool:
        if self.cluster:
            removed = self.client.srem(self._ids_key, video_id)  # the commit point first
            self.client.delete(self._key(video_id))
        else:
            pipe = self.client.pipeline(transaction=True)
            pipe.srem(self._ids_key, video_id)
            pipe.delete(self._key(video_id))
            removed, _ = pipe.execute()
        return bool(removed)

    @_unavailable
    def get(self, ids: Sequence[str]) -> FrameBatch:
        ids = list(ids)
        f, d = self._manifest.frames, self._manifest.dim
        frames = np.empty((len(ids), f, d), dtype=np.float16)
        mask = np.empty((len(ids), f), dtype=bool)
        times = np.empty((len(ids), f), dtype=np.float32)
        missing: list[str] = []
        for start in range(0, len(ids), PIPELINE_VIDEOS):
            pipe = self.client.pipeline(transaction=False)
            for video_id in ids[start : start + PIPELINE_VIDEOS]:
                pipe.hmget(self._key(video_id), ["frames", "mask", "times"])
            for offset, values in enumerate(pipe.execute()):
                i = start + offset
                if values[0] is None:
                    missing.append(ids[i])
                    continue
                if tuple(len(v) for v in values) != self._sizes:
                    raise StoreMismatch(f"redis key {self._key(ids[i])!r} holds a record of another size")
                frames[i] = np.frombuffer(values[0], dtype=np.float16).reshape(f, d)
                mask[i] = np.frombuffer(values[1], dtype=np.uint8).astype(bool)
                times[i] = np.frombuffer(values[2], dtype=np.float32)
        if missing:
            raise VideoNotFound(missing)
        return FrameBatch(frames, mask, times)

    @_unavailable
    def get_metadata(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), PIPELINE_VIDEOS * 8):
            pipe = self.client.pipeline(transaction=False)
            for video_id in ids[start : start + PIPELINE_VIDEOS * 8]:
                pipe.hget(self._key(video_id), "meta")
            out += [json.loads(raw) if raw else {} for raw in pipe.execute()]
        return out

    def all_metadata(self) -> dict[str, dict[str, Any]]:
        ids = self.ids()
        return {i: m for i, m in zip(ids, self.get_metadata(ids), strict=True) if m}

    @_unavailable
    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> bool:
        if not self.client.sismember(self._ids_key, video_id):
            return False
        key = self._key(video_id)
        if metadata:
            self.client.hset(key, "meta", json.dumps(metadata).encode())
        else:
            self.client.hdel(key, "meta")
        return True

    @_unavailable
    def ids(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(self._ids_key))

    @_unavailable
    def __len__(self) -> int:
        return int(self.client.scard(self._ids_key))

    @_unavailable
    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and bool(self.client.sismember(self._ids_key, video_id))

    @_unavailable
    def memory_bytes(self, sample: int = 100) -> float:
        """Mean MEMORY USAGE of up to `sample` video keys (bytes per video in Redis)."""
        ids = self.ids()[:sample]
        if not ids:
            return 0.0
        return float(np.mean([self.client.memory_usage(self._key(i), samples=0) or 0 for i in ids]))

    def ping(self) -> None:
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
            raise StoreUnavailable(f"redis frame store {self.description} is unreachable: {exc}") from exc

    def close(self) -> None:
        self.client.close()
