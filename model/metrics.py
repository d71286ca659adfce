"""Retrieval metrics: R@1/5/10, median and mean rank, both directions, several captions per video."""

from __future__ import annotations

import numpy as np


def ranks_of(sim: np.ndarray) -> np.ndarray:
    """0-based rank of every column in every row, highest score first [Nq, Nc].

    Double argsort gives each entry exactly one rank (a stable sort breaks ties by index), where
    the common `np.where(sorted == target)` trick returns several positions for a tie and so
    inflates the rank list.
    """
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.argsort(order, axis=1, kind="stable")


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """ranks: 0-based rank of the ground truth for each query."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return {
        "R1": float(100.0 * np.mean(ranks < 1)),
        "R5": float(100.0 * np.mean(ranks < 5)),
        "R10": float(100.0 * np.mean(ranks < 10)),
        "MdR": float(np.median(ranks) + 1),
        "MnR": float(np.mean(ranks) + 1),
    }


def retrieval_metrics(sim: np.ndarray, caption_video: np.ndarray) -> dict[str, dict[str, float]]:
    """Text-to-video and video-to-text metrics from sim [Ncaptions, Nvideos].

    caption_video[i] is the video of caption i; a video may have several captions. Text-to-video
    ranks each caption's video; video-to-text ranks each video's best-placed caption. The captions
    are laid out per video and padded with -inf, as the multi-sentence evaluation does.
    """
    sim = np.asarray(sim, dtype=np.float64)
    caption_video = np.asarray(caption_video)
    n_cap, n_vid = sim.shape
    if caption_video.shape != (n_cap,):
        raise ValueError(f"caption_video must have one entry per caption ({n_cap}), got {caption_video.shape}")
    t2v = ranks_of(sim)[np.arange(n_cap), caption_video]

    # [Nv, C_max] caption indices per video, -1 as padding
    per_video = [np.flatnonzero(caption_video == v) for v in range(n_vid)]
    c_max = max(len(c) for c in per_video)
    index = np.full((n_vid, c_max), -1)
    for v, caps in enumerate(per_video):
        index[v, : len(caps)] = caps
    if (index[:, 0] < 0).any():
        raise ValueError("every video needs at least one caption for video-to-text metrics")
    v2t_ranks = ranks_of(sim.T)  # [Nv, Ncaptions]
    padded = np.where(index >= 0, v2t_ranks[np.arange(n_vid)[:, None], np.maximum(index, 0)], np.inf)
    v2t = padded.min(axis=1)
    return {"t2v": summarize(t2v), "v2t": summarize(v2t)}


def dual_softmax(sim: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Dual-softmax re-normalisation (DSL): each score weighted by its softmax over the other axis.

    Scores here are logits already (multiplied by the logit scale), hence temperature 1. It uses
    the statistics of the whole query set, so its figures are reported apart from the raw ones.
    """
    sim = np.asarray(sim, dtype=np.float64)
    logits = sim * temperature
    logits = logits - logits.max(axis=0, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=0, keepdims=True)  # softmax over the captions, per video
    return sim * prior


def evaluate_similarity(sim: np.ndarray, caption_video: np.ndarray, dsl: bool = True) -> dict:
    """Raw metrics, plus DSL ones under "dsl" when asked."""
    out: dict = retrieval_metrics(sim, caption_video)
    if dsl:
        out["dsl"] = retrieval_metrics(dual_softmax(sim), caption_video)
    return out
