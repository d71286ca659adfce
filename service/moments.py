"""A search hit and the moment it points at: the span of frames GLIM's weights single out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A frame belongs to the moment when its weight is at least this share of the best frame's, and it
# is joined to the best frame by frames that all are: one contiguous span around the peak.
MOMENT_SHARE = 0.5


@dataclass(frozen=True)
class Hit:
    video_id: str
    score: float
    best_frame: int
    best_time_s: float
    start_s: float
    end_s: float


def moment(
    weights: np.ndarray, mask: np.ndarray, times: np.ndarray, share: float = MOMENT_SHARE
) -> tuple[int, float, float]:
    """(best frame, start_s, end_s) for one video: weights, mask, times [F].

    The span runs from the first to the last frame of the contiguous run around the best frame whose
    weights pass `share` of the best; it ends where the next sampled frame begins (or, at the last
    real frame, one median frame interval later), so a one-frame moment still has a length."""
    w = np.where(mask, weights, -np.inf)
    best = int(np.argmax(w))
    keep = mask & (weights >= share * weights[best])
    first = last = best
    while first > 0 and keep[first - 1]:
        first -= 1
    while last + 1 < len(keep) and keep[last + 1]:
        last += 1
    real = np.flatnonzero(mask)
    if last + 1 < len(mask) and mask[last + 1]:
        end = float(times[last + 1])
    else:
        steps = np.diff(times[real])
        end = float(times[last]) + (float(np.median(steps)) if len(steps) else 0.0)
    return best, round(float(times[first]), 3), round(max(end, float(times[first])), 3)


def make_hits(
    ids: Sequence[str], scores: Sequence[float], weights: np.ndarray, mask: np.ndarray, times: np.ndarray
) -> list[Hit]:
    """Hits of k videos from their scores and GLIM's frame weights, masks and times [k, F]."""
    hits = []
    for video_id, score, w, m, t in zip(ids, scores, weights, mask, times, strict=True):
        best, start, end = moment(w, m, t)
        hits.append(Hit(video_id, float(score), best, round(float(t[best]), 3), start, end))
    return hits
