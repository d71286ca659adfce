"""A video sent to PUT /videos/{id} made into what the catalog stores: frame features [F, D], the
frame mask [F] and times [F], from features given as JSON or from an uploaded video file (decoded
and run through the served model's video encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.data.video import VideoDecodeError, decode_video
from service.engine import SearchEngine
from service.stores.base import StoreManifest

VideoArrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # frames [F, D] fp32, mask [F], times [F]


class BadVideo(ValueError):
    """Features or a file that cannot become a video of this catalog; the message says why (HTTP 422)."""


def features_from_json(
    manifest: StoreManifest, rows: list[list[float]], given_times: list[float] | None
) -> VideoArrays:
    """Frame features as sent (1 to F rows of D numbers, times in seconds or one per frame) padded to F."""
    shape_error = f"frames must be a [F, {manifest.dim}] list of lists with 1 <= F <= {manifest.frames}"
    if any(len(row) != manifest.dim for row in rows):  # ragged rows would not even make an array
        raise BadVideo(shape_error)
    frames = np.asarray(rows, dtype=np.float32)
    if frames.ndim != 2 or frames.shape[0] < 1:
        raise BadVideo(shape_error)
    n = frames.shape[0]
    if n > manifest.frames:
        raise BadVideo(f"{n} frames given; this model keeps at most {manifest.frames}")
    if not np.isfinite(frames).all() or np.abs(frames).max() > 65000:
        raise BadVideo("frames must be finite numbers within float16 range")
    times = np.arange(n, dtype=np.float32) if given_times is None else np.asarray(given_times, dtype=np.float32)
    if times.shape != (n,):
        raise BadVideo(f"times must hold one number per frame ({n})")
    padded = np.zeros((manifest.frames, manifest.dim), np.float32)
    padded[:n] = frames
    mask = np.arange(manifest.frames) < n
    all_times = np.zeros(manifest.frames, np.float32)
    all_times[:n] = times
    return padded, mask, all_times


@torch.inference_mode()
def features_from_file(engine: SearchEngine, path: Path) -> VideoArrays:
    """The video file decoded (the model's frame count and image size) and encoded on the engine's device."""
    model = engine.model
    if path.stat().st_size == 0:
        raise BadVideo("the upload is empty: send the video file's bytes in the multipart field 'file'")
    try:
        clip = decode_video(path, model.config.num_frames, model.image_size)
    except VideoDecodeError as exc:
        # the decoder's message names the server's temporary file and PyAV's internals: say only why
        text = str(exc)
        reason = next((r for r in ("no video stream", "no decodable frames") if r in text), "not a container we read")
        raise BadVideo(f"the file is not a video we can decode ({reason})") from None
    frames = clip.frames[None].to(engine.device, engine.dtype)
    feats = model.encode_video(frames, clip.mask[None].to(engine.device))
    return feats.frames[0].float().cpu().numpy(), clip.mask.numpy(), clip.times.numpy()
