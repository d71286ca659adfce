"""Feature extraction: video files -> frame features V (after the temporal transformer) -> a local store.

The output directory is a `LocalStore` (fp16 `[F, D]` frames, mask and timestamps per video) plus
`extract.json`, which records the checkpoint, its hash, the dimensions and the videos that could
not be decoded. A second run over the same directory skips every video already stored, so an
interrupted extraction resumes where it stopped (and updates stored metadata that changed); a run
with another checkpoint is refused.

Metadata (service/metadata.py) comes from a JSONL manifest's "metadata" object, or else from a
sidecar file beside the video with its name and ".json" (clip1.mp4 -> clip1.json); it is stored
with the frames and an index build carries it into the catalog.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint
from model.data.clips import collate_skip_bad
from model.data.datasets import (
    SPLITS,
    VIDEO_EXTENSIONS,
    DatasetError,
    VideoItem,
    detect_layout,
    load_corpus,
)
from model.data.video import FrameCache, VideoDecodeError, decode_video
from model.device import resolve_device
from model.io import atomic_write_json
from service.metadata import BadMetadata, check_metadata
from service.stores.base import StoreManifest, StoreMismatch
from service.stores.local import LocalStore

log = logging.getLogger(__name__)

EXTRACT_FILE = "extract.json"


@dataclass
class ExtractSummary:
    out: str
    checkpoint: str
    model_hash: str
    dim: int
    frames: int
    dtype: str
    source: str
    split: str
    videos_found: int = 0  # distinct videos in the source
    skipped_existing: int = 0  # already in the store from an earlier run
    extracted: int = 0  # written by this run
    videos: int = 0  # in the store after this run
    failed_count: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video id -> why it could not be decoded
    seconds: float = 0.0  # the whole run, model loading included
    extract_seconds: float = 0.0  # decoding + encoding + storing only
    videos_per_s: float = 0.0  # extracted / extract_seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_videos(
    data: Path, split: str = "all", layout: str = "auto", videos_dir: Path | None = None
) -> list[VideoItem]:
    """Videos of a dataset layout (every split for "all"), a JSONL manifest, or a plain folder of files."""
    data = Path(data)
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected all, {', '.join(SPLITS)}")
    if not data.exists():
        raise FileNotFoundError(f"{data} does not exist")
    if data.is_file():
        return _dedupe(load_corpus(data, "test", layout="jsonl", videos_dir=videos_dir).videos)
    splits = SPLITS if split == "all" else (split,)
    if layout == "auto":
        for candidate in splits:
            try:
                layout = detect_layout(data, candidate)
                break
            except DatasetError:
                continue
    if layout == "auto":  # no dataset files: a folder of videos, id = file name without extension
        files = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise DatasetError(f"{data} holds neither a dataset layout nor video files ({', '.join(VIDEO_EXTENSIONS)})")
        return _dedupe([VideoItem(p.stem, p) for p in files])
    videos: list[VideoItem] = []
    for name in splits:
        try:
            videos += load_corpus(data, name, layout=layout, videos_dir=videos_dir).videos
        except DatasetError as exc:
            if split != "all":
                raise
            log.info("split %s skipped: %s", name, exc)
    if not videos:
        raise DatasetError(f"no videos found in {data} (layout {layout}, split {split})")
    return _dedupe(videos)


def _dedupe(videos: list[VideoItem]) -> list[VideoItem]:
    seen: dict[str, VideoItem] = {}
    for item in videos:
        if item.video_id in seen and seen[item.video_id].path != item.path:
            log.warning(
                "video id %s names %s and %s; keeping the first", item.video_id, seen[item.video_id].path, item.path
            )
        seen.setdefault(item.video_id, item)
    return list(seen.values())


def video_metadata(item: VideoItem) -> dict[str, Any]:
    """The item's metadata: from its manifest, else from its sidecar file, else none (BadMetadata
    names the file when the metadata is not a JSON object within the size limit)."""
    if item.metadata is not None:
        source, value = "its manifest line", item.metadata
    else:
        sidecar = Path(item.path).with_suffix(".json")
        if not sidecar.is_file():
            return {}
        source = sidecar.name
        try:
            value = json.loads(sidecar.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadMetadata(f"metadata in {source} is not valid JSON: {exc}") from None
    try:
        return check_metadata(value)
    except BadMetadata as exc:
        raise BadMetadata(f"metadata in {source}: {exc}") from None


class _Clips(torch.utils.data.Dataset):
    """Decoded clips; a video that cannot be decoded comes back as its error, not as an exception."""

    def __init__(self, items: list[VideoItem], num_frames: int, image_size: int, cache: FrameCache | None) -> None:
        self.items, self.num_frames, self.image_size, self.cache = items, num_frames, image_size, cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            if self.cache is not None:
                clip = self.cache.get_or_decode(item.path)
            else:
                clip = decode_video(item.path, self.num_frames, self.image_size)
        except VideoDecodeError as exc:
            return {"error": str(exc), "video_id": item.video_id}
        return {"frames": clip.frames, "frame_mask": clip.mask, "times": clip.times, "video_id": item.video_id}


def _collate(batch: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    errors = [item for item in batch if "error" in item]
    return collate_skip_bad([None if "error" in item else item for item in batch]), errors


def extract_features(
    checkpoint: Path,
    data: Path,
    out: Path,
    split: str = "all",
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 0,
    layout: str = "auto",
    videos_dir: Path | None = None,
    frame_cache: Path | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extracts every video of `data` not yet in the store at `out`; returns what it did."""
    if batch_size < 1 or workers < 0:
        raise ValueError("batch size must be at least 1 and workers at least 0")
    started = time.perf_counter()
    dev = resolve_device(device)
    manifest = StoreManifest.for_checkpoint(checkpoint)  # CheckpointError names a bad checkpoint
    videos = find_videos(data, split, layout, videos_dir)
    try:
        store = LocalStore.open_or_create(out, manifest)
    except StoreMismatch as exc:
        raise StoreMismatch(f"{exc}; extract into a new --out directory for this checkpoint") from exc
    summary = ExtractSummary(
        out=str(out),
        checkpoint=str(Path(checkpoint).resolve()),
        model_hash=manifest.model_hash,
        dim=manifest.dim,
        frames=manifest.frames,
        dtype=manifest.dtype,
        source=str(Path(data).resolve()),
        split=split,
        videos_found=len(videos),
    )
    try:
        metadata: dict[str, dict[str, Any]] = {}
        for v in videos:
            try:
                metadata[v.video_id] = video_metadata(v)
            except BadMetadata as exc:
                log.warning("skipping video %s: %s", v.video_id, exc)
                summary.failed[v.video_id] = str(exc)
        videos = [v for v in videos if v.video_id in metadata]
        todo = [v for v in videos if v.video_id not in store]
        kept = [v.video_id for v in videos if v.video_id in store]
        stored = store.get_metadata(kept)
        changed = [(i, metadata[i]) for i, old in zip(kept, stored, strict=True) if metadata[i] != old]
        for video_id, meta in changed:
            store.set_metadata(video_id, meta)
        if changed:
            log.info("updated the metadata of %d stored video(s)", len(changed))
        summary.skipped_existing = len(videos) - len(todo)
        if summary.skipped_existing:
            log.info(
                "%d of %d videos already extracted in %s; skipping them", summary.skipped_existing, len(videos), out
            )
        if todo:
            _run(checkpoint, todo, metadata, store, summary, dev, batch_size, workers, frame_cache, progress)
    finally:
        # Written even when interrupted, so the figures describe what the store holds.
        summary.videos = len(store)
        summary.failed_count = len(summary.failed)
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.extract_seconds = round(summary.extract_seconds, 3)
        summary.videos_per_s = round(summary.extracted / summary.extract_seconds, 3) if summary.extract_seconds else 0.0
        store.close()
        atomic_write_json(Path(out) / EXTRACT_FILE, summary.to_dict())
    return summary


def _run(
    checkpoint: Path,
    todo: list[VideoItem],
    metadata: dict[str, dict[str, Any]],
    store: LocalStore,
    summary: ExtractSummary,
    device: torch.device,
    batch_size: int,
    workers: int,
    frame_cache: Path | None,
    progress: bool,
) -> None:
    model = load_checkpoint(Path(checkpoint), map_location=str(device)).eval()
    frames, image_size = model.config.num_frames, model.image_size
    cache = FrameCache(frame_cache, frames, image_size) if frame_cache is not None else None
    loader = torch.utils.data.DataLoader(
        _Clips(todo, frames, image_size, cache),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    log.info("extracting %d videos on %s (batch %d, %d workers)", len(todo), device, batch_size, workers)
    started = time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(todo), desc="extract", unit="video", disable=not progress) as bar:
        for good, errors in loader:
            for error in errors:
                log.warning("skipping video %s: %s", error["video_id"], error["error"])
                summary.failed[error["video_id"]] = error["error"]
            if good is not None:
                mask = good["frame_mask"].to(device, non_blocking=True)
                features = model.encode_video(good["frames"].to(device, non_blocking=True), mask)
                store.put_many(
                    good["video_id"],
                    features.frames.float().cpu().numpy(),  # [B, F, D]; the store keeps fp16
                    good["frame_mask"].numpy(),
                    good["times"].numpy(),
                    [metadata[i] for i in good["video_id"]],
                )
                summary.extracted += len(good["video_id"])
            bar.update(len(errors) + (0 if good is None else len(good["video_id"])))
            summary.extract_seconds = time.perf_counter() - started
