"""Deterministic synthetic corpus in the MSR-VTT layout: real mp4 videos of event sequences plus captions.

It exists to test one claim: GLCCL, which pools frames under the guidance of the query sentence and its
words, aligns a caption with the *part* of a video it describes better than mean pooling of all frames.
A video is 2-4 events (one coloured shape making one motion on a background colour); most captions
describe one event or two consecutive ones; videos come in families whose siblings are hard negatives
(colours / shapes / motions swapped between two events, the events reordered, one attribute changed),
so the bag of all frames is ambiguous while the frames a caption talks about are not.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.data.synth_captions import MOTIONS, _captions, _eval_caption, _phrase
from model.data.synth_events import write_event_clips
from model.data.synth_render import BACKGROUNDS, COLORS, SHAPES, render_frames
from model.data.video import write_mp4
from model.io import atomic_write_text

log = logging.getLogger(__name__)

VARIANT_OPS = ("swap_color", "swap_shape", "swap_motion", "reorder", "change_one")
CONFIG_FILE = "synth_config.json"  # marks a directory as a corpus we wrote (safe to overwrite)
LAYOUT_FILES = ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv")
# a video, or the temporary file a killed run left (model.io.atomic_write; ".partial" from older versions)
_VIDEO_FILE = re.compile(r"^(video\d+\.mp4(\.partial)?|\.video\d+\.mp4\.\w+\.tmp)$")


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 600  # number of videos
    seed: int = 0  # everything (events, renders, captions, splits) follows from it
    size: int = 64  # frame width/height in pixels (even: yuv420p halves chroma)
    fps: int = 8  # frame rate written into the mp4
    frames_per_event: int = 8  # frames each event lasts
    min_events: int = 2  # events per video, inclusive range
    max_events: int = 4
    test_fraction: float = 0.15  # share of videos in the test split (one caption each in the csv)
    val_fraction: float = 0.1  # share in the validation split (checkpoint choice, never test)
    # Evaluation captions per test/val video, each naming its video alone in the split. MSR-VTT has one;
    # three triple the queries, so that a few points of R@1 between two heads are more than noise.
    eval_captions: int = 3

    def __post_init__(self) -> None:
        checks = [
            (self.videos >= 1, "videos must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.size >= 16 and self.size % 2 == 0, "size must be an even number >= 16"),
            (self.fps >= 1, "fps must be >= 1"),
            (self.frames_per_event >= 2, "frames_per_event must be >= 2"),
            (1 <= self.min_events <= self.max_events, "need 1 <= min_events <= max_events"),
            (self.max_events <= len(SHAPES), f"max_events must be <= {len(SHAPES)} (distinct shapes)"),
            (0 <= self.test_fraction and 0 <= self.val_fraction, "fractions must be >= 0"),
            (self.eval_captions >= 1, "eval_captions must be >= 1"),
            (self.test_fraction + self.val_fraction < 1, "test_fraction + val_fraction must be < 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def render_events(events: list[dict[str, Any]], config: SynthConfig) -> np.ndarray:
    """Frames `[len(events) * frames_per_event, size, size, 3]` uint8 for a config (see render_frames)."""
    return render_frames(events, config.size, config.frames_per_event)


# ----------------------------------------------------------------------------- events and families


def _pick(rng: np.random.Generator, values: Any, exclude: Any = ()) -> str:
    options = [v for v in values if v not in exclude]
    return str(options[int(rng.integers(len(options)))])


def _new_event(rng: np.random.Generator, shape: str, color: str) -> dict[str, Any]:
    params = {k: round(float(rng.uniform(-0.08, 0.08)), 3) for k in ("dx", "dy")}
    params["scale"] = round(float(rng.uniform(0.85, 1.15)), 3)
    return {
        "shape": shape,
        "color": color,
        "motion": _pick(rng, MOTIONS),
        "background": _pick(rng, BACKGROUNDS),
        "params": params,
    }


def _base_video(rng: np.random.Generator, config: SynthConfig) -> list[dict[str, Any]]:
    # Distinct shapes and colours inside a video, so swapping them between two events changes the video.
    n = int(rng.integers(config.min_events, config.max_events + 1))
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:n]]
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:n]]
    return [_new_event(rng, s, c) for s, c in zip(shapes, colors, strict=True)]


def _variant(rng: np.random.Generator, events: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    """A hard negative of `events`: same attribute values (or nearly), bound or ordered differently."""
    out = [dict(e) for e in events]
    n = len(out)
    if op == "reorder":
        perm = rng.permutation(n)
        return [out[i] for i in (perm if n < 2 or (perm != np.arange(n)).any() else perm[::-1])]
    if op == "change_one" or n < 2:  # one attribute of one event: same shape other colour, etc.
        e = out[int(rng.integers(n))]
        attr = ("color", "shape", "motion")[int(rng.integers(3))]
        taken = {x[attr] for x in out} if attr != "motion" else {e["motion"]}
        e[attr] = _pick(rng, {"color": COLORS, "shape": SHAPES, "motion": MOTIONS}[attr], taken)
        return out
    i, j = (int(x) for x in rng.choice(n, size=2, replace=False))
    attr = op.removeprefix("swap_")
    out[i][attr], out[j][attr] = out[j][attr], out[i][attr]
    return out


def _key(events: list[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    return tuple((e["shape"], e["color"], e["motion"]) for e in events)


def _runs(key: tuple) -> set[tuple]:
    return {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)}


class _Registry:
    """Refuses a video whose event sequence equals, contains or lies inside another's as a contiguous run,
    so every video's full caption names it alone and a unique test caption always exists."""

    def __init__(self) -> None:
        self.full: set[tuple] = set()
        self.runs: set[tuple] = set()

    def add(self, events: list[dict[str, Any]]) -> bool:
        key = _key(events)
        if key in self.runs or self.full & _runs(key):
            return False
        self.full.add(key)
        self.runs |= _runs(key)
        return True


def _families(rng: np.random.Generator, config: SynthConfig) -> list[list[tuple[list[dict], str]]]:
    registry, families, count = _Registry(), [], 0
    ops: list[str] = []
    while count < config.videos:
        base = _base_video(rng, config)
        if not registry.add(base):
            continue
        family = [(base, "base")]
        wanted = min(int(rng.choice(3, p=[0.2, 0.45, 0.35])), config.videos - count - 1)
        for _ in range(wanted * 4):  # a few tries: some variants collide with existing videos
            if len(family) > wanted:
                break
            if not ops:  # cycle through every kind of hard negative so each is well represented
                ops = [VARIANT_OPS[i] for i in rng.permutation(len(VARIANT_OPS))]
            events = _variant(rng, base, ops[-1])
            if registry.add(events):
                family.append((events, ops.pop()))
        families.append(family)
        count += len(family)
    return families


# ----------------------------------------------------------------------------- corpus


def check_out_dir(out_dir: Path) -> None:
    """Raise unless out_dir is absent, empty, or a corpus this module wrote (which is then overwritten)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
        raise FileExistsError(f"{out_dir} is not empty and is not a synthetic corpus; choose another --out")


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _share(n: int, fraction: float) -> int:
    # At least one evaluation video when asked for any, so tiny corpora still have all three splits.
    return max(1, round(n * fraction)) if fraction > 0 and n >= 3 else round(n * fraction)


def prepare_out_dir(out_dir: Path, video_file: re.Pattern) -> Path:
    """Checks out_dir, makes out_dir/videos and drops what an earlier run left (layout files, videos
    matching `video_file`), so that a run killed midway leaves no json or csv describing videos that
    are gone. Returns the videos folder."""
    check_out_dir(out_dir)
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    for name in LAYOUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for f in videos_dir.iterdir():
        if video_file.match(f.name):
            f.unlink()
    return videos_dir


def generate_corpus(out_dir: Path, config: SynthConfig, progress: bool = True) -> dict:
    """Write the corpus under out_dir (see the module doc); returns a summary of what was written."""
    out_dir = Path(out_dir)
    videos_dir = prepare_out_dir(out_dir, _VIDEO_FILE)
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(asdict(config), indent=1, sort_keys=True) + "\n")

    rng = np.random.default_rng(config.seed)
    families = _families(rng, config)
    # Siblings share a split, so the hard negatives of a test video are in the test set too: each family, in
    # random order, joins the split furthest below its target size; it spills over only when that fills up
    # (at most two families straddle splits), so every split gets its exact size.
    n_test, n_val = _share(config.videos, config.test_fraction), _share(config.videos, config.val_fraction)
    deficit = {"train": config.videos - n_test - n_val, "test": n_test, "val": n_val}
    members = []
    for fam in rng.permutation(len(families)).tolist():
        split = max(deficit, key=deficit.__getitem__)
        for events, op in families[fam]:
            if deficit[split] <= 0:
                split = max(deficit, key=deficit.__getitem__)
            deficit[split] -= 1
            members.append((events, op, fam, split))
    # Shuffle before numbering so siblings do not sit at neighbouring ids.
    members = [members[i] for i in rng.permutation(len(members))]
    base_id = {fam: f"video{i}" for i, (_, op, fam, _) in enumerate(members) if op == "base"}

    fpe, fps = config.frames_per_event, config.fps
    records = [
        {"video_id": f"video{i}", "split": split, "family": fam, "variant": op,
         "variant_of": None if op == "base" else base_id[fam], "frames": len(events) * fpe, "fps": fps,
         "events": [e | {"start": k * fpe, "end": (k + 1) * fpe} for k, e in enumerate(events)]}
        for i, (events, op, fam, split) in enumerate(members)
    ]  # fmt: skip
    captions = [_captions(np.random.default_rng([config.seed, 1, i]), m[0]) for i, m in enumerate(members)]

    # Up to eval_captions captions per evaluation video, each satisfied by no other video of its split (see
    # _eval_caption); rows are grouped by round so the first row of every video comes first.
    eval_rows: dict[str, list[list[str]]] = {"test": [], "val": []}
    for split, rows in eval_rows.items():
        ids = [i for i, r in enumerate(records) if r["split"] == split]
        taken: dict[int, set[str]] = {i: set() for i in ids}
        for round_ in range(config.eval_captions):
            for i in ids:
                others = [members[o][0] for o in ids if o != i]
                rng_i = np.random.default_rng([config.seed, 2, i, round_])
                chosen = _eval_caption(rng_i, members[i][0], captions[i], others, frozenset(taken[i]))
                if chosen is None:
                    continue
                if chosen not in captions[i]:  # as in MSR-VTT, the evaluation sentence is one of the json's
                    captions[i].append(chosen)
                taken[i].add(chosen[0])
                rows.append([f"video{i}", chosen[0]])

    sentences = [
        {"video_id": f"video{i}", "caption": text, "sen_id": 0, "events": idx}
        for i, caps in enumerate(captions)
        for text, _, idx in caps
    ]
    for k, s in enumerate(sentences):
        s["sen_id"] = k

    for i, (events, *_) in enumerate(tqdm(members, desc="synth videos", unit="video", disable=not progress)):
        write_mp4(videos_dir / f"video{i}.mp4", render_events(events, config), fps)

    # Single-event clips of the train and val videos, each with the captions of that event alone.
    clips: dict[str, list] = {"train": [], "val": []}
    for i, r in enumerate(records):
        for k, e in enumerate(members[i][0]) if r["split"] in clips else ():
            texts = dict.fromkeys([c[0] for c in captions[i] if c[2] == [k]] + [_phrase(e, True, True, "finite")])
            clips[r["split"]].append((f"video{i}_e{k}", e, list(texts)))
    n_clips = write_event_clips(out_dir, clips, config.size, fpe, fps, progress)

    # The json last: its presence says the corpus is complete.
    header = ["key", "vid_key", "video_id", "sentence"]
    for split, name in (("test", "MSRVTT_JSFUSION_test.csv"), ("val", "MSRVTT_val.csv")):
        table = [[f"ret{k}", f"msr{vid[5:]}", vid, cap] for k, (vid, cap) in enumerate(eval_rows[split])]
        atomic_write_text(out_dir / name, _csv_text(header, table))
    train = [[r["video_id"]] for r in records if r["split"] == "train"]
    atomic_write_text(out_dir / "MSRVTT_train.9k.csv", _csv_text(["video_id"], train))
    data = {"videos": records, "sentences": sentences}
    atomic_write_text(out_dir / "MSRVTT_data.json", json.dumps(data, separators=(",", ":")) + "\n")

    summary = {
        "videos": len(records),
        "captions": len(sentences),
        **{split: sum(r["split"] == split for r in records) for split in ("train", "val", "test")},
        "event_clips": sum(n_clips.values()),
        "out": str(out_dir),
    }
    log.info("synthetic corpus: %s", summary)
    return summary
