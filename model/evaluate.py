"""Encode a corpus split and compute retrieval metrics for a model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.data.clips import VideoDataset, collate_skip_bad
from model.data.datasets import Corpus
from model.data.video import FrameCache
from model.encoders import trim_tokens
from model.features import TextFeatures, VideoFeatures
from model.glccl import RetrievalModel
from model.metrics import evaluate_similarity
from model.scoring import score_chunked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSplit:
    text: TextFeatures  # every caption of the decodable videos
    video: VideoFeatures  # every decodable video
    caption_video: np.ndarray  # [Ncaptions] index into `video`
    video_ids: list[str]
    skipped: list[str]  # videos that could not be decoded (their captions are left out)


@torch.no_grad()
def encode_texts(model: RetrievalModel, captions: list[str], batch_size: int = 256) -> TextFeatures:
    """Captions -> TextFeatures padded to max_words (each batch is cut to its longest, then re-padded)."""
    tokenizer = model.tokenizer()
    device = next(model.parameters()).device
    nw = model.config.max_words
    parts = []
    for start in range(0, len(captions), batch_size):
        tokens = trim_tokens(tokenizer(captions[start : start + batch_size])).to(device)
        feats = model.encode_text(tokens)
        pad = nw - feats.words.shape[1]
        parts.append(
            TextFeatures(
                feats.sentence.float(),
                torch.nn.functional.pad(feats.words.float(), (0, 0, 0, pad)),
                torch.nn.functional.pad(feats.word_mask, (0, pad)),
            )
        )
    return TextFeatures(
        torch.cat([p.sentence for p in parts]),
        torch.cat([p.words for p in parts]),
        torch.cat([p.word_mask for p in parts]),
    )


@torch.no_grad()
def encode_videos(
    model: RetrievalModel,
    corpus: Corpus,
    cache: FrameCache | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[VideoFeatures, list[int], list[str]]:
    """Every decodable video of the corpus -> (features, their indices in corpus.videos, skipped ids)."""
    device = next(model.parameters()).device
    dataset = VideoDataset(corpus, model.config.num_frames, model.image_size, cache)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skip_bad)
    frames, masks, kept = [], [], []
    for batch in tqdm(loader, desc="encode videos", unit="batch", disable=not progress):
        if batch is None:
            continue
        feats = model.encode_video(batch["frames"].to(device), batch["frame_mask"].to(device))
        frames.append(feats.frames.float())
        masks.append(feats.frame_mask)
        kept.extend(batch["video_index"].tolist())
    if not kept:
        raise ValueError("no video of the split could be decoded")
    skipped = sorted(dataset.skipped)
    if skipped:
        log.warning("%d videos could not be decoded and were left out: %s", len(skipped), ", ".join(skipped[:5]))
    return VideoFeatures(torch.cat(frames), torch.cat(masks)), kept, skipped


@torch.no_grad()
def encode_split(
    model: RetrievalModel,
    corpus: Corpus,
    cache: FrameCache | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> EncodedSplit:
    video, kept, skipped = encode_videos(model, corpus, cache, batch_size, progress)
    new_index = {old: new for new, old in enumerate(kept)}
    captions, caption_video = [], []
    for text, v in zip(corpus.captions, corpus.caption_video, strict=True):
        if v in new_index:
            captions.append(text)
            caption_video.append(new_index[v])
    return EncodedSplit(
        text=encode_texts(model, captions),
        video=video,
        caption_video=np.asarray(caption_video),
        video_ids=[corpus.videos[i].video_id for i in kept],
        skipped=skipped,
    )


@torch.no_grad()
def evaluate_model(
    model: RetrievalModel,
    corpus: Corpus,
    cache: FrameCache | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """{"t2v": {...}, "v2t": {...}, "dsl": {"t2v", "v2t"}, "videos", "captions", "skipped_videos"}"""
    was_training = model.training
    model.eval()
    try:
        split = encode_split(model, corpus, cache, batch_size, progress)
        sim = score_chunked(model.head, split.text, split.video)["S"].float().cpu().numpy()
    finally:
        model.train(was_training)
    result = evaluate_similarity(sim, split.caption_video)
    result.update(videos=len(split.video_ids), captions=len(split.caption_video), skipped_videos=split.skipped)
    return result
