"""Drawing the synthetic videos: shapes on backgrounds, moved per event (model.data.video writes them as H.264)."""

from __future__ import annotations

from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star")
# fmt: off
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 250), "yellow": (240, 230, 50),
          "white": (245, 245, 245), "purple": (150, 60, 210), "orange": (250, 140, 20), "pink": (250, 130, 200)}
# fmt: on
# Background words never name an object colour, so a colour word in a caption is unambiguous.
BACKGROUNDS = {"black": (15, 15, 15), "gray": (120, 120, 120), "brown": (100, 60, 30), "navy": (20, 25, 80)}


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of a shape of radius r centred at the origin (dy grows downwards)."""
    d = np.hypot(dx, dy)
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return d <= r
    if shape == "ring":
        return (d <= r) & (d >= 0.55 * r)
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "diamond":
        return ax + ay <= r
    if shape == "cross":
        return ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r))
    if shape == "triangle":  # apex up, base at 0.7 r
        return (dy <= 0.7 * r) & (dy + r >= ax * 1.9)
    if shape == "star":  # five points: the radius swings between 0.45 r and r with the angle
        phase = (np.arctan2(dx, -dy) / (2 * np.pi) * 5) % 1.0
        return d <= r * (0.45 + 0.55 * np.abs(2 * phase - 1))
    raise ValueError(f"unknown shape {shape!r}")


def _pose(event: dict[str, Any], p: float, size: int) -> tuple[float, float, float]:
    """Centre and radius at progress p in [0, 1] of the event."""
    jit = event["params"]
    cx, cy = size * (0.5 + jit["dx"]), size * (0.5 + jit["dy"])
    # objects cover roughly a tenth to a quarter of the frame: at a sixth of the width (the first
    # version) a shape was ~4% of the pixels and a 64-pixel ViT learned the backgrounds instead
    r = 0.26 * size * jit["scale"]
    lo, hi = 0.28 * size, 0.72 * size
    motion = event["motion"]
    if motion == "left":
        cx = hi + (lo - hi) * p
    elif motion == "right":
        cx = lo + (hi - lo) * p
    elif motion == "up":
        cy = hi + (lo - hi) * p
    elif motion == "down":
        cy = lo + (hi - lo) * p
    elif motion == "grow":
        r *= 0.45 + 1.1 * p
    elif motion == "shrink":
        r *= 1.55 - 1.1 * p
    return cx, cy, r


def render_frames(events: list[dict[str, Any]], size: int, frames_per_event: int) -> np.ndarray:
    """Frames `[len(events) * frames_per_event, size, size, 3]` uint8, one block of frames per event.

    A frame depends only on its event (its jitter lives in event["params"]), so reordering events
    permutes frame blocks and leaves the mean over frames unchanged: exactly what mean pooling cannot see.
    """
    fpe, ss = frames_per_event, 2  # 2x2 supersampling: smooth edges
    coords = (np.arange(size * ss) + 0.5) / ss
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    frames = []
    for event in events:
        bg = np.array(BACKGROUNDS[event["background"]], np.float32)
        fg = np.array(COLORS[event["color"]], np.float32)
        for k in range(fpe):
            cx, cy, r = _pose(event, k / (fpe - 1), size)
            mask = _shape_mask(event["shape"], xx - cx, yy - cy, r)
            alpha = mask.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)[..., None]
            frames.append(np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8))
    return np.stack(frames)
