"""Video decoding, CLIP preprocessing and an on-disk cache of decoded clips.

Frames are sampled CLIP4Clip-style: `num_frames` indices from `np.linspace` over the decoded frame
count, so a clip covers the whole video whatever its length. Preprocessing follows open_clip's
image transform (PIL bicubic resize of the shorter side, centre crop, OpenAI mean/std), so features
from decoded video match what the CLIP image encoder saw in pre-training.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from model.io import atomic_write

log = logging.getLogger(__name__)

# open_clip.constants.OPENAI_DATASET_MEAN / _STD, copied so that decoding does not import open_clip.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

_CACHE_FORMAT = 1  # bump when the stored layout changes, so old cache files are not misread


class VideoDecodeError(Exception):
    """A video could not be turned into frames; the message names the file and the reason."""


@dataclass(frozen=True)
class Clip:
    frames: torch.Tensor  # [F, 3, S, S] float32, CLIP-normalised; padded frames are all zeros
    mask: torch.Tensor  # [F] bool, True for real frames, False for padding
    times: torch.Tensor  # [F] float32 seconds of each sampled frame (0 for padding)


class RawClip(NamedTuple):
    """A clip before normalisation: what the cache stores (uint8 is 4x smaller than float32)."""

    frames: np.ndarray  # [F, 3, S, S] uint8 RGB, zeros for padding
    mask: np.ndarray  # [F] bool
    times: np.ndarray  # [F] float32 seconds


def sample_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Uniform frame indices over `frame_count` frames; every frame when there are too few."""
    if frame_count <= num_frames:
        return np.arange(frame_count)
    # Truncation (dtype=int) as in CLIP4Clip; indices stay distinct because the step exceeds 1.
    return np.linspace(0, frame_count - 1, num=num_frames, dtype=int)


def _preprocess(frame: av.VideoFrame, image_size: int) -> np.ndarray:
    """[3, S, S] uint8: shorter side to S (bicubic, as open_clip does with PIL), centre crop."""
    image = frame.to_image()  # PIL RGB
    image = TF.resize(image, image_size, interpolation=InterpolationMode.BICUBIC)
    image = TF.center_crop(image, [image_size, image_size])
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _count_packets(path: Path) -> int:
    """Frame count by demuxing only, for containers (e.g. webm) that do not store it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_pass(
    path: Path, num_frames: int, image_size: int, expected: int
) -> tuple[int, dict[int, tuple[np.ndarray, float]]]:
    """Decode every frame, keeping only those sampled for `expected` frames.

    Returns the number of frames actually decoded and the kept frames by index. When the count
    differs from `expected` the caller decodes again with the true count.
    """
    wanted = set(sample_indices(expected, num_frames).tolist())
    kept: dict[int, tuple[np.ndarray, float]] = {}
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or 25)
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    t = frame.time if frame.time is not None else count / fps
                    kept[count] = (_preprocess(frame, image_size), float(t))
                count += 1
        except av.error.FFmpegError as exc:
            # A truncated download still holds usable frames; only a file with none is an error.
            if count == 0:
                raise
            log.warning("%s: decoding stopped after %d frames (%s); using those", path, count, exc)
    return count, kept


def decode_video_uint8(path: Path, num_frames: int, image_size: int) -> RawClip:
    """Decode and preprocess `num_frames` uniformly sampled frames, before normalisation."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            expected = container.streams.video[0].frames
        if expected <= 0:
            expected = _count_packets(path)
        count, kept = _decode_pass(path, num_frames, image_size, expected)
        if count != expected and count > 0:
            # The container's count was wrong (edit lists, missing metadata): sample again.
            count, kept = _decode_pass(path, num_frames, image_size, count)
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises many types for bad input; callers need exactly one
        raise VideoDecodeError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not kept:
        raise VideoDecodeError(f"{path}: no decodable frames")

    frames = np.zeros((num_frames, 3, image_size, image_size), dtype=np.uint8)
    mask = np.zeros(num_frames, dtype=bool)
    times = np.zeros(num_frames, dtype=np.float32)
    for slot, index in enumerate(sorted(kept)[:num_frames]):
        frames[slot], times[slot] = kept[index]
        mask[slot] = True
    return RawClip(frames, mask, times)


def to_clip(raw: RawClip) -> Clip:
    """Scale to [0, 1], normalise with the OpenAI mean/std, and zero the padded frames."""
    frames = torch.from_numpy(np.ascontiguousarray(raw.frames)).float().div_(255.0)  # [F, 3, S, S]
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    frames = (frames - mean) / std
    mask = torch.from_numpy(np.asarray(raw.mask, dtype=bool).copy())
    frames[~mask] = 0.0
    times = torch.from_numpy(np.asarray(raw.times, dtype=np.float32).copy())
    return Clip(frames=frames, mask=mask, times=times)


def decode_video(path: Path, num_frames: int, image_size: int) -> Clip:
    """Decode `num_frames` uniformly sampled, CLIP-preprocessed frames; raises VideoDecodeError."""
    return to_clip(decode_video_uint8(path, num_frames, image_size))


class FrameCache:
    """Decoded clips on disk, one .npz per (video file version, num_frames, image_size).

    The key includes size and mtime, so a replaced video is decoded again; stale entries are
    simply never read (delete the directory to reclaim space).
    """

    def __init__(self, directory: Path, num_frames: int, image_size: int) -> None:
        self.directory = Path(directory)
        self.num_frames = num_frames
        self.image_size = image_size
        self.directory.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path) -> str:
        path = Path(path)
        try:
            st = path.stat()
        except OSError as exc:
            raise VideoDecodeError(f"{path}: file not found ({exc.strerror})") from exc
        ident = f"{_CACHE_FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        ident += f"|{self.num_frames}|{self.image_size}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def entry_path(self, path: Path) -> Path:
        key = self.key(path)
        # Two-level fan-out keeps directories small for corpora of 100k+ videos.
        return self.directory / key[:2] / f"{key}.npz"

    def _read(self, entry: Path) -> RawClip | None:
        try:
            with np.load(entry) as data:
                raw = RawClip(data["frames"], data["mask"], data["times"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # a torn or foreign file: decode again and overwrite it
            log.warning("frame cache entry %s is unreadable (%s); decoding again", entry, exc)
            return None
        if raw.frames.shape != (self.num_frames, 3, self.image_size, self.image_size):
            log.warning("frame cache entry %s has shape %s; decoding again", entry, raw.frames.shape)
            return None
        return raw

    def _write(self, entry: Path, raw: RawClip) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)

        def savez(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, frames=raw.frames, mask=raw.mask, times=raw.times)

        try:
            # Readers see either no entry or a whole one; a cache needs no fsync (a torn entry is decoded again).
            atomic_write(entry, savez, durable=False)
        except OSError as exc:
            # A full or read-only cache must not stop training; the clip is still returned.
            log.warning("could not write frame cache entry %s: %s", entry, exc)

    def get_or_decode(self, path: Path) -> Clip:
        entry = self.entry_path(path)
        raw = self._read(entry)
        if raw is None:
            raw = decode_video_uint8(path, self.num_frames, self.image_size)
            self._write(entry, raw)
        return to_clip(raw)


def write_mp4(path: Path, frames: np.ndarray, fps: int, faststart: bool = False) -> Path:
    """H.264 / yuv420p mp4 of frames `[T, H, W, 3]` uint8, written whole (model.io.atomic_write), so a
    killed run leaves no half file. The same frames give the same bytes run after run: bitexact muxing,
    one encoder thread, and no macroblock tree. With x264's mbtree on, its assembly path encoded the same
    32-pixel frames differently about one run in four (not with asm=0, nor without mbtree, lookahead or
    B-frames: it reads memory that is not the picture); decoded pixels then differed by up to 20 levels."""
    options = {"fflags": "+bitexact"} | ({"movflags": "faststart"} if faststart else {})

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4", options=options) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "medium", "x264-params": "no-mbtree=1"}
            stream.codec_context.thread_count = 1
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    return atomic_write(path, write, durable=False)
