"""The frame-feature store interface shared by the local (memory-mapped) and Redis backends.

A store keeps, per video, the frame features `V` after the temporal transformer (fp16 `[F, D]`),
the frame mask and the frame timestamps. It describes itself with a `StoreManifest` (dimension,
frames, dtype, the hash of the checkpoint that made the features, format version) so that a
service never scores queries from one model against features from another.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
FRAME_DTYPE = "float16"  # V is kept in half precision: half the bytes, ample for ranking


class StoreMismatch(ValueError):
    """A store (or index) built for another model or layout than the one asked for."""


class StoreUnavailable(ConnectionError):
    """The backend cannot be reached (server down, directory gone)."""


class VideoNotFound(KeyError):
    """Some requested video ids are not in the store; `missing` lists them."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        super().__init__(f"{len(self.missing)} video id(s) not in the store: {shown}{more}")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class StoreManifest:
    dim: int  # D, the embedding size
    frames: int  # F, frames per video (padded frames are masked)
    model_hash: str  # model.checkpoint.checkpoint_hash of the checkpoint that made V
    dtype: str = FRAME_DTYPE  # element type of the stored frames
    format_version: int = FORMAT_VERSION  # layout of the stored records

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreManifest:
        missing = [n for n in ("dim", "frames", "model_hash") if n not in data]
        if missing:
            raise StoreMismatch(f"store manifest lacks field(s) {', '.join(missing)}")
        return cls(
            dim=int(data["dim"]),
            frames=int(data["frames"]),
            model_hash=str(data["model_hash"]),
            dtype=str(data.get("dtype", FRAME_DTYPE)),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
        )

    @classmethod
    def for_checkpoint(cls, ckpt_dir: Path) -> StoreManifest:
        """The manifest a store must have to serve the model in `ckpt_dir`."""
        from model.checkpoint import checkpoint_hash, read_config

        config = read_config(Path(ckpt_dir))
        return cls(dim=config.embed_dim, frames=config.num_frames, model_hash=checkpoint_hash(Path(ckpt_dir)))

    def differences(self, expected: StoreManifest) -> list[str]:
        """'field: have != expected' for every differing field (empty when compatible)."""
        have, want = self.to_dict(), expected.to_dict()
        return [f"{k}: {have[k]!r} (store) != {want[k]!r} (expected)" for k in want if have[k] != want[k]]

    def check(self, expected: StoreManifest, what: str) -> None:
        diffs = self.differences(expected)
        if diffs:
            raise StoreMismatch(f"{what} does not match: " + "; ".join(diffs))


@dataclass(frozen=True)
class FrameBatch:
    frames: np.ndarray  # [n, F, D] float16, padded frames zero
    mask: np.ndarray  # [n, F] bool, True for real frames
    times: np.ndarray  # [n, F] float32 seconds of each frame (0 for padding)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def coerce_video(
    manifest: StoreManifest, frames: Any, mask: Any, times: Any, n: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks shapes against the manifest and converts to the stored dtypes.

    With `n`, the arrays hold `n` videos (`[n, F, D]`, ...); otherwise one video (`[F, D]`, ...).
    Padded frames are zeroed so that a stored record never depends on what the caller left there.
    """
    lead = () if n is None else (n,)
    f, d = manifest.frames, manifest.dim
    frames = np.asarray(frames)
    mask = np.asarray(mask)
    times = np.asarray(times)
    for name, arr, shape in (
        ("frames", frames, (*lead, f, d)),
        ("mask", mask, (*lead, f)),
        ("times", times, (*lead, f)),
    ):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, the store holds {shape}")
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be floating point, got {frames.dtype}")
    mask = mask.astype(bool, copy=False)
    frames = np.where(mask[..., None], frames, 0).astype(np.float16)
    if not np.isfinite(frames).all():
        raise ValueError("frames hold NaN or inf (or values beyond float16 range)")
    times = np.where(mask, times, 0).astype(np.float32)
    return frames, mask, times


class FrameStore(abc.ABC):
    """Per-video frame features, looked up by video id.

    Implementations: `LocalStore` (memory-mapped shards on disk, the embedded default) and
    `RedisStore` (one key per video, standalone server or Redis Cluster).
    """

    description: str  # where the store lives, for messages

    @property
    @abc.abstractmethod
    def manifest(self) -> StoreManifest: ...

    @abc.abstractmethod
    def get(self, ids: Sequence[str]) -> FrameBatch:
        """Frames of `ids`, in that order; VideoNotFound names any id that is absent."""

    @abc.abstractmethod
    def put_many(
        self, ids: Sequence[str], frames: Any, mask: Any, times: Any, metadata: Sequence[dict] | None = None
    ) -> None:
        """Adds or replaces several videos: frames [n, F, D], mask [n, F], times [n, F], and each one's
        metadata (a JSON object, service/metadata.py; None: none). A replaced video's metadata is replaced."""

    def get_metadata(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Each id's metadata ({} where it has none; absent ids too). Default: a store without metadata."""
        return [{} for _ in ids]

    def all_metadata(self) -> dict[str, dict[str, Any]]:
        """Every video's non-empty metadata, by id (what filters are evaluated on)."""
        return {}

    def set_metadata(self, video_id: str, metadata: dict[str, Any]) -> bool:
        """Replaces one stored video's metadata, frames untouched; False when the video is not there."""
        raise PermissionError(f"frame store {self.description} keeps no metadata")

    @abc.abstractmethod
    def delete(self, video_id: str) -> bool:
        """Removes a video; False when it was not there."""

    @abc.abstractmethod
    def ids(self) -> list[str]: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, video_id: object) -> bool: ...

    @abc.abstractmethod
    def ping(self) -> None:
        """Raises StoreUnavailable when the backend cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def get_unordered(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames [n, F, D], mask [n, F], order [n]) of `ids` in whatever order the store reads them
        cheapest: row i holds ids[order[i]]. For scans that score and rank (the narrowing), where a
        reorder costs a copy. The arrays may be views of a buffer the store reuses for the calling
        thread's next call. Default: `get` in the given order."""
        batch = self.get(ids)
        return batch.frames, batch.mask, np.arange(len(batch.mask))

    def preload(self) -> int:
        """Brings the frames into this process's memory ahead of the first queries, where the store
        keeps them in mapped files; returns the bytes touched (0: nothing to do, e.g. Redis)."""
        return 0

    def put(self, video_id: str, frames: Any, mask: Any, times: Any, metadata: dict | None = None) -> None:
        """Adds or replaces one video: frames [F, D], mask [F], times [F], metadata."""
        frames, mask, times = coerce_video(self.manifest, frames, mask, times)
        self.put_many([video_id], frames[None], mask[None], times[None], None if metadata is None else [metadata])

    def check_compatible(self, expected: StoreManifest) -> None:
        """Raises StoreMismatch naming every field that differs from `expected`."""
        self.manifest.check(expected, f"frame store {self.description}")

    def iter_batches(
        self, batch_size: int = 1024, ids: Sequence[str] | None = None
    ) -> Iterator[tuple[list[str], FrameBatch]]:
        """(ids, frames) in chunks of `batch_size`, over `ids` or every video."""
        order = list(self.ids() if ids is None else ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, self.get(chunk)

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metadata_list(metadata: Sequence[dict] | None, n: int) -> list[dict[str, Any]]:
    """put_many's metadata argument as n dicts ({} for none)."""
    if metadata is None:
        return [{} for _ in range(n)]
    if len(metadata) != n:
        raise ValueError(f"{len(metadata)} metadata objects for {n} videos")
    return [dict(m or {}) for m in metadata]


def check_video_id(video_id: object) -> str:
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"video ids are non-empty strings, got {video_id!r}")
    if "\n" in video_id or "\x00" in video_id:
        raise ValueError(f"video id {video_id!r} holds a newline or NUL")
    return video_id
