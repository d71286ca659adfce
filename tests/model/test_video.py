"""Decoding, sampling, preprocessing and the frame cache, on tiny mp4 files written here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import video as video_mod
from model.data.video import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    FrameCache,
    VideoDecodeError,
    decode_video,
    sample_indices,
    write_mp4,
)

STEP = 8  # grey level of frame i is STEP * i, so a decoded frame names its own index


def write_video(path: Path, num_frames: int, width: int = 32, height: int = 32, fps: int = 10) -> Path:
    """Frame i is solid grey STEP * i (grey survives yuv420p almost exactly)."""
    grey = np.arange(num_frames, dtype=np.uint8)[:, None, None, None] * STEP
    return write_mp4(path, np.broadcast_to(grey, (num_frames, height, width, 3)), fps)


def frame_indices(frames: torch.Tensor) -> list[int]:
    """Undo the normalisation and read each frame's grey level back as its index."""
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    grey = ((frames * std + mean) * 255).mean(dim=(1, 2, 3))  # [F]
    return [round(g / STEP) for g in grey.tolist()]


def test_sample_indices_is_uniform_and_covers_the_video():
    assert sample_indices(30, 12).tolist() == np.linspace(0, 29, 12, dtype=int).tolist()
    assert sample_indices(30, 12)[0] == 0 and sample_indices(30, 12)[-1] == 29
    assert sample_indices(5, 12).tolist() == [0, 1, 2, 3, 4]
    assert len(set(sample_indices(13, 12).tolist())) == 12


def test_uniform_sampling_picks_the_right_frames(tmp_path):
    clip = decode_video(write_video(tmp_path / "a.mp4", 30), num_frames=8, image_size=16)
    assert clip.frames.shape == (8, 3, 16, 16) and clip.frames.dtype == torch.float32
    assert clip.mask.dtype == torch.bool and clip.mask.all()
    expected = np.linspace(0, 29, 8, dtype=int).tolist()
    assert frame_indices(clip.frames) == expected
    # fps 10: frame i is shown at i / 10 seconds
    assert torch.allclose(clip.times, torch.tensor(expected, dtype=torch.float32) / 10, atol=1e-4)


def test_short_video_is_padded_and_masked(tmp_path):
    clip = decode_video(write_video(tmp_path / "short.mp4", 5), num_frames=8, image_size=16)
    assert clip.mask.tolist() == [True] * 5 + [False] * 3
    assert frame_indices(clip.frames[:5]) == [0, 1, 2, 3, 4]
    assert torch.all(clip.frames[5:] == 0)
    assert torch.all(clip.times[5:] == 0)
    assert torch.allclose(clip.times[:5], torch.arange(5, dtype=torch.float32) / 10, atol=1e-4)


def test_normalisation_values_and_centre_crop(tmp_path):
    # Non-square source: the shorter side becomes image_size and the longer one is cropped.
    path = write_video(tmp_path / "wide.mp4", 17, width=48, height=32)
    clip = decode_video(path, num_frames=1, image_size=16)
    assert clip.frames.shape == (1, 3, 16, 16)
    grey = 0 / 255.0  # only frame 0 is sampled when num_frames == 1
    want = (grey - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    got = clip.frames[0].mean(dim=(1, 2))
    assert torch.allclose(got, want, atol=3 / 255 / 0.26)

    clip = decode_video(write_video(tmp_path / "sq.mp4", 20), num_frames=2, image_size=16)
    level = STEP * 19 / 255.0  # last sampled frame
    want = (level - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    assert torch.allclose(clip.frames[1].mean(dim=(1, 2)), want, atol=3 / 255 / 0.26)


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="nope.mp4"):
        decode_video(tmp_path / "nope.mp4", 4, 16)


def test_corrupt_file_raises_decode_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        decode_video(bad, 4, 16)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        decode_video(empty, 4, 16)


def test_truncated_file_keeps_the_frames_before_the_cut(tmp_path):
    # moov at the front (faststart), so cutting the file loses frames, not the index.
    path = tmp_path / "full.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)  # bytes spread over all frames
    write_mp4(path, noise, 10, faststart=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    clip = decode_video(cut, 4, 16)
    assert clip.mask.all()
    assert clip.times[0] == 0 and 0.5 < clip.times[-1] < 2.9  # spread over what is left
    assert torch.all(clip.times[1:] > clip.times[:-1])

    # moov at the end: half a file has no index, which is a decode error, not a crash.
    plain = write_video(tmp_path / "plain.mp4", 30).read_bytes()
    cut.write_bytes(plain[: len(plain) // 2])
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        decode_video(cut, 4, 16)


def test_frame_cache_second_read_does_not_decode(tmp_path, monkeypatch):
    path = write_video(tmp_path / "a.mp4", 12)
    calls = []
    real = video_mod.decode_video_uint8

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(video_mod, "decode_video_uint8", counting)
    cache = FrameCache(tmp_path / "cache", num_frames=6, image_size=16)
    first = cache.get_or_decode(path)
    second = cache.get_or_decode(path)
    assert len(calls) == 1
    assert cache.entry_path(path).is_file()
    for a, b in [(first.frames, second.frames), (first.mask, second.mask), (first.times, second.times)]:
        assert torch.equal(a, b)
    direct = decode_video(path, 6, 16)
    assert torch.equal(first.frames, direct.frames) and torch.equal(first.times, direct.times)
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # no temp files left behind


def test_frame_cache_redecodes_a_modified_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "a.mp4", 12)
    calls = []
    real = video_mod.decode_video_uint8
    monkeypatch.setattr(video_mod, "decode_video_uint8", lambda *a: calls.append(1) or real(*a))
    cache = FrameCache(tmp_path / "cache", num_frames=4, image_size=16)
    old_key = cache.key(path)
    cache.get_or_decode(path)

    write_video(path, 20)  # a new file at the same path: new size and mtime
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.key(path) != old_key
    clip = cache.get_or_decode(path)
    assert len(calls) == 2
    assert frame_indices(clip.frames) == np.linspace(0, 19, 4, dtype=int).tolist()

    # Other frame settings are other entries, not a misread of this one.
    assert FrameCache(tmp_path / "cache", num_frames=5, image_size=16).key(path) != cache.key(path)


def test_frame_cache_recovers_from_a_torn_entry(tmp_path):
    path = write_video(tmp_path / "a.mp4", 12)
    cache = FrameCache(tmp_path / "cache", num_frames=4, image_size=16)
    cache.get_or_decode(path)
    cache.entry_path(path).write_bytes(b"not an npz")
    clip = cache.get_or_decode(path)
    assert frame_indices(clip.frames) == np.linspace(0, 11, 4, dtype=int).tolist()


def test_frame_cache_missing_file_raises_decode_error(tmp_path):
    cache = FrameCache(tmp_path / "cache", num_frames=4, image_size=16)
    with pytest.raises(VideoDecodeError, match="gone.mp4"):
        cache.get_or_decode(tmp_path / "gone.mp4")
