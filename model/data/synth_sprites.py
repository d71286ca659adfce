"""A second synthetic style, "sprites", that the recipes are checked on but never tuned on.

Everything a model could overfit to in the default "shapes" style is different here: the vocabulary
(shapes, colours, motions, sizes), the renderer (rotating sprites on textured backgrounds: gradients,
stripes, checks, noise), the frame rate, event lengths (so video lengths vary), object sizes and the
phrasing of captions. The layout is the public CLIP4Clip MSR-VTT one as users download it: no
validation csv and no single-event clips, so `glccl train` has to carve its own validation split.

Each video is 3 events by default (one sprite making one motion); captions name one event or two in
order; a third of the videos are variants of another (events reordered, or one event replaced) and
share its split, so a caption has to be read for order and for every attribute it names.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.data.synth import CONFIG_FILE, _csv_text, _share, prepare_out_dir
from model.data.video import write_mp4
from model.io import atomic_write_text

log = logging.getLogger(__name__)

# a video, or the temporary file a killed run left (model.io.atomic_write; ".partial" from older versions)
_VIDEO_FILE = re.compile(r"^(clip\d+\.mp4(\.partial)?|\.clip\d+\.mp4\.\w+\.tmp)$")
SPRITES = ("heart", "hexagon", "arrow", "crescent", "bar", "ellipse", "hourglass")
# fmt: off
TINTS = {"cyan": (0, 215, 225), "magenta": (225, 0, 190), "lime": (150, 250, 0), "gold": (250, 195, 0),
         "teal": (0, 125, 120), "crimson": (175, 0, 30), "violet": (140, 95, 255), "silver": (200, 200, 212)}
# fmt: on
# motion -> (finite, -ing) phrase
MOVES = {
    "spin": ("spins", "spinning"),
    "bounce": ("bounces", "bouncing"),
    "zigzag": ("zigzags", "zigzagging"),
    "diagonal": ("slides diagonally", "sliding diagonally"),
    "blink": ("blinks", "blinking"),
    "orbit": ("circles around", "circling around"),
    "fall": ("falls", "falling"),
}
SIZES = {"small": 0.15, "large": 0.3}  # radius as a share of the frame side
TEXTURES = ("gradient", "stripes", "checks", "noise")


@dataclass(frozen=True)
class SpritesConfig:
    videos: int = 1500
    seed: int = 0
    size: int = 64  # frame side in pixels (even)
    fps: int = 12
    events: int = 3  # events per video
    min_event_frames: int = 6  # each event lasts between these many frames (video lengths vary)
    max_event_frames: int = 14
    test_fraction: float = 0.2
    val_fraction: float = 0.0  # 0: no MSRVTT_val.csv, as the public layout
    eval_captions: int = 2  # evaluation rows per test (and val) video, each naming that video alone

    def __post_init__(self) -> None:
        checks = [
            (self.videos >= 1 and self.seed >= 0, "videos must be >= 1 and seed >= 0"),
            (self.size >= 16 and self.size % 2 == 0, "size must be an even number >= 16"),
            (self.fps >= 1, "fps must be >= 1"),
            (1 <= self.events <= len(SPRITES), f"events must be between 1 and {len(SPRITES)}"),
            (2 <= self.min_event_frames <= self.max_event_frames, "need 2 <= min_event_frames <= max_event_frames"),
            (0 <= self.test_fraction and 0 <= self.val_fraction, "fractions must be >= 0"),
            (self.test_fraction + self.val_fraction < 1, "test_fraction + val_fraction must be < 1"),
            (self.eval_captions >= 1, "eval_captions must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# ----------------------------------------------------------------------------- rendering


def _sprite_mask(sprite: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of a sprite of radius r at the origin, in already rotated coordinates (y down)."""
    if sprite == "heart":  # the classic implicit heart curve, apex down
        u, v = x / r * 1.25, -y / r * 1.25 + 0.25
        return (u**2 + v**2 - 1) ** 3 - u**2 * v**3 <= 0
    if sprite == "hexagon":
        ax, ay = np.abs(x), np.abs(y)
        return (ay <= 0.866 * r) & (0.866 * ax + 0.5 * ay <= 0.866 * r)
    if sprite == "arrow":  # pointing right: a shaft and a head
        shaft = (x >= -r) & (x <= 0.1 * r) & (np.abs(y) <= 0.28 * r)
        head = (x >= 0.1 * r) & (x <= r) & (np.abs(y) <= 0.75 * (r - x))
        return shaft | head
    if sprite == "crescent":
        return (np.hypot(x, y) <= r) & (np.hypot(x - 0.45 * r, y) >= 0.8 * r)
    if sprite == "bar":
        return (np.abs(x) <= r) & (np.abs(y) <= 0.3 * r)
    if sprite == "ellipse":
        return (x / r) ** 2 + (y / (0.55 * r)) ** 2 <= 1
    if sprite == "hourglass":
        return (np.abs(y) <= r) & (np.abs(x) <= 0.15 * r + 0.75 * np.abs(y))
    raise ValueError(f"unknown sprite {sprite!r}")


def _background(texture: str, tone: tuple[int, int, int], size: int, seed: int) -> np.ndarray:
    """[size, size, 3] float: a dim textured backdrop, so that the sprite is the brightest thing."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    if texture == "gradient":
        level = 0.4 + 0.6 * (xx + yy) / 2
    elif texture == "stripes":
        level = 0.55 + 0.45 * (np.floor(xx * 8) % 2)
    elif texture == "checks":
        level = 0.55 + 0.45 * ((np.floor(xx * 6) + np.floor(yy * 6)) % 2)
    else:
        level = 0.5 + 0.5 * np.random.default_rng(seed).random((size, size))
    return level[..., None] * np.array(tone, np.float32)


def _pose(event: dict[str, Any], p: float, size: int) -> tuple[float, float, float, float, bool]:
    """Centre, radius, angle and visibility at progress p in [0, 1] of the event."""
    r = SIZES[event["size"]] * size
    cx, cy = size * (0.5 + event["dx"]), size * (0.5 + event["dy"])
    angle, visible, amp = event["angle"], True, 0.22 * size
    move = event["motion"]
    if move == "spin":
        angle += 2 * np.pi * p
    elif move == "bounce":
        cy = size * 0.72 - 2 * amp * abs(np.sin(2 * np.pi * p))
    elif move == "zigzag":
        cx = size * 0.25 + size * 0.5 * p
        cy = size * 0.5 + amp * (1 - 4 * abs((2 * p) % 1 - 0.5))
    elif move == "diagonal":
        cx, cy = size * (0.25 + 0.5 * p), size * (0.25 + 0.5 * p)
    elif move == "blink":
        visible = int(p * 6) % 2 == 0
    elif move == "orbit":
        cx, cy = size / 2 + amp * np.cos(2 * np.pi * p), size / 2 + amp * np.sin(2 * np.pi * p)
    elif move == "fall":
        cy = size * 0.2 + size * 0.6 * p**2
    return cx, cy, r, angle, visible


def render_sprites(events: list[dict[str, Any]], size: int) -> np.ndarray:
    """Frames [sum of event lengths, size, size, 3] uint8, each event drawn for its own length."""
    ss = 2
    coords = (np.arange(size * ss) + 0.5) / ss
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    frames = []
    for event in events:
        bg = _background(event["texture"], event["tone"], size, event["noise_seed"])
        fg = np.array(TINTS[event["tint"]], np.float32)
        n = event["length"]
        for k in range(n):
            cx, cy, r, angle, visible = _pose(event, k / max(1, n - 1), size)
            c, s = np.cos(angle), np.sin(angle)
            x, y = xx - cx, yy - cy
            mask = _sprite_mask(event["sprite"], c * x + s * y, -s * x + c * y, r) & visible
            alpha = mask.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)[..., None]
            frames.append(np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8))
    return np.stack(frames)


# ----------------------------------------------------------------------------- videos and captions


def _event(rng: np.random.Generator, sprite: str, tint: str, cfg: SpritesConfig) -> dict[str, Any]:
    tone = tuple(int(v) for v in rng.integers(20, 80, size=3))
    return {
        "sprite": sprite,
        "tint": tint,
        "motion": str(rng.choice(list(MOVES))),
        "size": str(rng.choice(list(SIZES))),
        "texture": str(rng.choice(TEXTURES)),
        "tone": tone,
        "noise_seed": int(rng.integers(1 << 30)),
        "dx": round(float(rng.uniform(-0.1, 0.1)), 3),
        "dy": round(float(rng.uniform(-0.1, 0.1)), 3),
        "angle": round(float(rng.uniform(0, 2 * np.pi)), 3),
        "length": int(rng.integers(cfg.min_event_frames, cfg.max_event_frames + 1)),
    }


def _video(rng: np.random.Generator, cfg: SpritesConfig) -> list[dict[str, Any]]:
    sprites = rng.permutation(len(SPRITES))[: cfg.events]
    tints = rng.permutation(len(TINTS))[: cfg.events]
    return [_event(rng, SPRITES[s], list(TINTS)[t], cfg) for s, t in zip(sprites, tints, strict=True)]


def _variant(rng: np.random.Generator, events: list[dict[str, Any]], cfg: SpritesConfig) -> list[dict[str, Any]]:
    if len(events) > 1 and rng.random() < 0.5:
        perm = rng.permutation(len(events))
        if (perm == np.arange(len(events))).all():
            perm = perm[::-1]
        return [dict(events[i]) for i in perm]
    out = [dict(e) for e in events]
    k = int(rng.integers(len(out)))
    used = {e["sprite"] for e in out}
    out[k] = _event(rng, str(rng.choice([s for s in SPRITES if s not in used])), out[k]["tint"], cfg)
    return out


def _phrase(e: dict[str, Any], named: set[str], form: str) -> str:
    words = [e[a] for a in ("size", "tint") if a in named] + [e["sprite"]]
    noun = f"{'an' if words[0][0] in 'aeiou' or words[0].startswith('hour') else 'a'} {' '.join(words)}"
    if "motion" not in named:
        return noun if form == "ing" else f"{noun} shows up"
    return f"{noun} {MOVES[e['motion']][0 if form == 'finite' else 1]}"


def _caption(rng: np.random.Generator, events: list[dict[str, Any]], length: int) -> tuple[str, list[dict]]:
    """(caption, spec): spec lists, per described consecutive event, the attributes it names."""
    start = int(rng.integers(len(events) - length + 1))
    spec, parts = [], []
    for e in events[start : start + length]:
        named = {a for a, p in (("tint", 0.8), ("motion", 0.75), ("size", 0.3)) if rng.random() < p}
        named |= {"tint"} if not named & {"tint", "motion"} else set()
        spec.append({"sprite": e["sprite"], **{a: e[a] for a in named}})
        parts.append((e, named))
    if length == 1:
        ((e, named),) = parts
        templates = ["{f}", "footage of {i}", "in this clip {f}", "{i} on screen", "here {f}"]
        t = templates[int(rng.integers(len(templates)))]
        return t.format(f=_phrase(e, named, "finite"), i=_phrase(e, named, "ing")), spec
    if length == 2:
        a, b = (_phrase(e, n, "finite") for e, n in parts)
        templates = ["{a}, and later {b}", "{a} before {b}", "after {a}, {b}", "{a}; next {b}"]
        return templates[int(rng.integers(len(templates)))].format(a=a, b=b), spec
    return ", then ".join(_phrase(e, n, "finite") for e, n in parts), spec


def _matches(spec: list[dict[str, Any]], events: list[dict[str, Any]]) -> bool:
    return any(
        all(events[s + k][a] == v for k, part in enumerate(spec) for a, v in part.items())
        for s in range(len(events) - len(spec) + 1)
    )


def _train_captions(rng: np.random.Generator, events: list[dict[str, Any]]) -> list[str]:
    out: dict[str, None] = {}
    for _ in range(60):
        if len(out) >= 8:
            break
        length = min(len(events), int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])))
        out.setdefault(_caption(rng, events, length)[0])
    return list(out)


def _eval_caption(rng, own, others, taken: set[str]) -> str | None:
    """A caption naming one event or two of `own` that no video of `others` satisfies, or None."""
    for _ in range(80):
        length = min(len(own), 1 if rng.random() < 0.55 else 2)
        text, spec = _caption(rng, own, length)
        if text not in taken and not any(_matches(spec, o) for o in others):
            return text
    return None


def generate_sprites(out_dir: Path, config: SpritesConfig, progress: bool = True) -> dict:
    """Writes the sprites corpus under out_dir in the MSR-VTT layout; returns a summary."""
    out_dir = Path(out_dir)
    videos_dir = prepare_out_dir(out_dir, _VIDEO_FILE)
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps({"style": "sprites", **asdict(config)}, indent=1) + "\n")
    rng = np.random.default_rng([config.seed, 7])
    # Families: a base video and 0-2 variants, kept in one split so that hard negatives meet at test.
    families: list[list[list[dict]]] = []
    count = 0
    while count < config.videos:
        base = _video(rng, config)
        fam = [base] + [_variant(rng, base, config) for _ in range(int(rng.choice(3, p=[0.6, 0.25, 0.15])))]
        fam = fam[: config.videos - count]
        families.append(fam)
        count += len(fam)
    n_test, n_val = _share(config.videos, config.test_fraction), _share(config.videos, config.val_fraction)
    deficit = {"train": config.videos - n_test - n_val, "test": n_test, "val": n_val}
    members: list[tuple[list[dict], str]] = []
    for f in rng.permutation(len(families)).tolist():
        split = max(deficit, key=deficit.__getitem__)
        for events in families[f]:
            if deficit[split] <= 0:
                split = max(deficit, key=deficit.__getitem__)
            deficit[split] -= 1
            members.append((events, split))
    members = [members[i] for i in rng.permutation(len(members))]
    ids = [f"clip{i:05d}" for i in range(len(members))]
    sentences, eval_rows = [], {"test": [], "val": []}
    for i, (events, _) in enumerate(members):
        for text in _train_captions(np.random.default_rng([config.seed, 8, i]), events):
            sentences.append({"video_id": ids[i], "caption": text, "sen_id": len(sentences)})
    for split, rows in eval_rows.items():
        idx = [i for i, m in enumerate(members) if m[1] == split]
        for i in idx:
            others = [members[o][0] for o in idx if o != i]
            rng_i, taken = np.random.default_rng([config.seed, 9, i]), set()
            for _ in range(config.eval_captions):
                text = _eval_caption(rng_i, members[i][0], others, taken)
                if text is not None:
                    taken.add(text)
                    rows.append([ids[i], text])
    for i, (events, _) in enumerate(tqdm(members, desc="sprites videos", unit="video", disable=not progress)):
        write_mp4(videos_dir / f"{ids[i]}.mp4", render_sprites(events, config.size), config.fps)
    header = ["key", "vid_key", "video_id", "sentence"]
    for split, name in (("test", "MSRVTT_JSFUSION_test.csv"), ("val", "MSRVTT_val.csv")):
        if eval_rows[split]:
            table = [[f"ret{k}", f"msr{vid[4:]}", vid, cap] for k, (vid, cap) in enumerate(eval_rows[split])]
            atomic_write_text(out_dir / name, _csv_text(header, table))
    train = [[ids[i]] for i, m in enumerate(members) if m[1] == "train"]
    atomic_write_text(out_dir / "MSRVTT_train.9k.csv", _csv_text(["video_id"], train))
    records = [
        {"video_id": ids[i], "split": s, "fps": config.fps, "frames": sum(e["length"] for e in ev),
         "events": [{**e, "start": sum(x["length"] for x in ev[:k]), "end": sum(x["length"] for x in ev[: k + 1])}
                    for k, e in enumerate(ev)]}
        for i, (ev, s) in enumerate(members)
    ]  # fmt: skip
    atomic_write_text(out_dir / "MSRVTT_data.json", json.dumps({"videos": records, "sentences": sentences}) + "\n")
    summary = {
        "style": "sprites",
        "videos": len(members),
        "captions": len(sentences),
        **{s: sum(m[1] == s for m in members) for s in ("train", "val", "test")},
        "eval_queries": {s: len(r) for s, r in eval_rows.items()},
        "out": str(out_dir),
    }
    log.info("sprites corpus: %s", summary)
    return summary
