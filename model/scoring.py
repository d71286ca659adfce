"""Scoring every text against every video in blocks, so memory stays bounded for any corpus."""

from __future__ import annotations

import torch
from torch import Tensor

from model.features import TextFeatures, VideoFeatures
from model.heads import Head


def score_chunked(
    head: Head,
    text: TextFeatures,
    video: VideoFeatures,
    chunk_texts: int = 32,
    chunk_videos: int = 128,
    terms: bool = False,
) -> dict[str, Tensor]:
    """S [Nt, Nv] (and the head's terms when `terms`), computed block by block.

    Peak memory is set by one block's intermediates (chunk_texts x chunk_videos pairs), not by
    Nt x Nv. Gradients flow through the blocks when the inputs require them.
    """
    names = ("S", *head.terms) if terms else ("S",)
    rows: dict[str, list[Tensor]] = {n: [] for n in names}
    for t0 in range(0, len(text), chunk_texts):
        text_block = text[t0 : t0 + chunk_texts]
        cols: dict[str, list[Tensor]] = {n: [] for n in names}
        for v0 in range(0, len(video), chunk_videos):
            out = head(text_block, video[v0 : v0 + chunk_videos])
            for n in names:
                cols[n].append(out[n])
        for n in names:
            rows[n].append(torch.cat(cols[n], dim=1))
    return {n: torch.cat(rows[n], dim=0) for n in names}
