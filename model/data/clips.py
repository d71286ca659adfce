"""Torch datasets over a Corpus: decoded, preprocessed clips, bad videos skipped and counted."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from model.data.datasets import Corpus, VideoItem
from model.data.video import Clip, FrameCache, VideoDecodeError, decode_video

log = logging.getLogger(__name__)


class _ClipSource:
    """Loads clips through the cache (or directly) and remembers which videos failed.

    `skipped` is per process: with DataLoader workers each worker has its own copy, which is why
    `collate_skip_bad` also reports how many items it dropped.
    """

    def __init__(self, num_frames: int, image_size: int, cache: FrameCache | None) -> None:
        if cache is not None and (cache.num_frames, cache.image_size) != (num_frames, image_size):
            raise ValueError(
                f"frame cache holds {cache.num_frames} frames of {cache.image_size}px, "
                f"dataset wants {num_frames} of {image_size}px"
            )
        self.num_frames = num_frames
        self.image_size = image_size
        self.cache = cache
        self.skipped: set[str] = set()

    def load(self, item: VideoItem) -> Clip | None:
        try:
            if self.cache is not None:
                return self.cache.get_or_decode(item.path)
            return decode_video(item.path, self.num_frames, self.image_size)
        except VideoDecodeError as exc:
            if item.video_id not in self.skipped:
                self.skipped.add(item.video_id)
                log.warning("skipping video %s: %s", item.video_id, exc)
            return None


class VideoTextTrainDataset(torch.utils.data.Dataset):
    """One item per video that has a caption; each read draws one of its captions at random.

    The draw is a function of (seed, epoch, index), so runs are reproducible whatever the
    worker count, and `set_epoch` changes the draws between epochs.
    """

    def __init__(
        self,
        corpus: Corpus,
        num_frames: int,
        image_size: int,
        cache: FrameCache | None = None,
        seed: int = 0,
    ) -> None:
        self.corpus = corpus
        self.source = _ClipSource(num_frames, image_size, cache)
        self.seed = seed
        self.epoch = 0
        per_video = corpus.caption_indices()
        self.video_indices = [v for v, caps in enumerate(per_video) if caps]
        self.video_captions = [per_video[v] for v in self.video_indices]

    @property
    def skipped(self) -> set[str]:
        return self.source.skipped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.video_indices)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        video_index = self.video_indices[index]
        clip = self.source.load(self.corpus.videos[video_index])
        if clip is None:
            return None
        rng = np.random.default_rng((self.seed, self.epoch, index))
        choices = self.video_captions[index]
        caption = self.corpus.captions[choices[int(rng.integers(len(choices)))]]
        return {
            "frames": clip.frames,
            "frame_mask": clip.mask,
            "times": clip.times,
            "caption": caption,
            "video_index": video_index,
        }


class VideoDataset(torch.utils.data.Dataset):
    """One item per corpus video, for evaluation and feature extraction."""

    def __init__(self, corpus: Corpus, num_frames: int, image_size: int, cache: FrameCache | None = None) -> None:
        self.corpus = corpus
        self.source = _ClipSource(num_frames, image_size, cache)

    @property
    def skipped(self) -> set[str]:
        return self.source.skipped

    def __len__(self) -> int:
        return len(self.corpus.videos)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.corpus.videos[index]
        clip = self.source.load(item)
        if clip is None:
            return None
        return {
            "frames": clip.frames,
            "frame_mask": clip.mask,
            "times": clip.times,
            "video_index": index,
            "video_id": item.video_id,
        }


def collate_skip_bad(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack the good items of a batch; None when every item was a bad video.

    Tensors are stacked, ints become a tensor, strings stay a list; `num_dropped` counts the bad
    items, so a training loop can total them across DataLoader workers.
    """
    good = [item for item in batch if item is not None]
    if not good:
        return None
    out: dict[str, Any] = {}
    for key, first in good[0].items():
        values = [item[key] for item in good]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    out["num_dropped"] = len(batch) - len(good)
    return out
