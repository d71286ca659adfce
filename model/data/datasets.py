"""Text-video corpora in the layouts users already have.

Every loader produces the same `Corpus` (videos, captions, caption -> video), so training and
evaluation never look at a layout. Video files are only located here, never opened: a missing file
is found, warned about and skipped when it is decoded (see `model.data.clips`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LAYOUTS = ("msrvtt", "didemo", "vatex", "jsonl")
SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv")


class DatasetError(ValueError):
    """A corpus cannot be loaded: unknown layout or split, a missing or malformed file."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: Path
    metadata: dict | None = field(default=None, compare=False)  # a JSONL manifest's "metadata" object


@dataclass(frozen=True)
class Corpus:
    videos: list[VideoItem]
    captions: list[str]
    caption_video: list[int]  # index into `videos` for each caption

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            raise DatasetError("captions and caption_video differ in length")
        if any(not 0 <= v < len(self.videos) for v in self.caption_video):
            raise DatasetError("caption_video holds an index outside videos")

    def caption_indices(self) -> list[list[int]]:
        """For each video, the indices of its captions (possibly none)."""
        out: list[list[int]] = [[] for _ in self.videos]
        for c, v in enumerate(self.caption_video):
            out[v].append(c)
        return out

    def captions_of(self, video_index: int) -> list[str]:
        return [self.captions[c] for c, v in enumerate(self.caption_video) if v == video_index]


# ---------------------------------------------------------------------------------------------
# Building blocks


def _require(path: Path, layout: str, why: str = "") -> Path:
    if not path.exists():
        extra = f" ({why})" if why else ""
        raise DatasetError(f"layout '{layout}': required file {path} is missing{extra}")
    return path


def _read_json(path: Path, layout: str) -> Any:
    try:
        return json.loads(_require(path, layout).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"layout '{layout}': {path} is not valid JSON: {exc}") from exc


def _read_csv(path: Path, layout: str, columns: Iterable[str], why: str = "") -> list[dict[str, str]]:
    with _require(path, layout, why).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"layout '{layout}': {path} lacks column(s) {missing}")
        return list(reader)


def _read_list(path: Path, layout: str) -> list[str]:
    lines = _require(path, layout).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _strip_ext(name: str) -> str:
    root, ext = os.path.splitext(name)
    return root if ext.lower() in VIDEO_EXTENSIONS else name


class _VideoFinder:
    """Maps a video name to its file: as given, then name + ext, then name without ext + ext.

    The directory is listed once, because probing every extension for 100k videos is slow on
    network file systems.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self.names = {e.name for e in os.scandir(directory)}
        except OSError:
            self.names = set()

    def __call__(self, name: str) -> Path:
        stem = _strip_ext(name)
        candidates = [name] + [name + e for e in VIDEO_EXTENSIONS] + [stem + e for e in VIDEO_EXTENSIONS]
        for candidate in candidates:
            if candidate in self.names:
                return self.directory / candidate
        # Not found: keep a plausible path; the decode step reports and skips it.
        return self.directory / (name if stem != name else name + ".mp4")


class _Builder:
    """Accumulates videos and captions; strips captions and drops empty ones."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.videos: list[VideoItem] = []
        self.index: dict[str, int] = {}
        self.captions: list[str] = []
        self.caption_video: list[int] = []
        self.empty = 0

    def add_video(self, video_id: str, path: Path, metadata: dict | None = None) -> int:
        if video_id in self.index:
            known = self.videos[self.index[video_id]].path
            if known != path:
                raise DatasetError(f"layout '{self.layout}': video id {video_id!r} names {known} and {path}")
            return self.index[video_id]
        self.index[video_id] = len(self.videos)
        self.videos.append(VideoItem(video_id, path, metadata))
        return self.index[video_id]

    def add_caption(self, video_index: int, caption: Any) -> None:
        text = str(caption).strip() if caption is not None else ""
        if not text:
            self.empty += 1
            return
        self.captions.append(text)
        self.caption_video.append(video_index)

    def build(self) -> Corpus:
        if self.empty:
            log.warning("layout '%s': dropped %d empty caption(s)", self.layout, self.empty)
        no_caption = len(self.videos) - len(set(self.caption_video))
        if no_caption:
            log.warning("layout '%s': %d video(s) have no caption", self.layout, no_caption)
        return Corpus(self.videos, self.captions, self.caption_video)


# ---------------------------------------------------------------------------------------------
# Layouts


def _load_msrvtt(root: Path, split: str, videos_dir: Path) -> Corpus:
    find = _VideoFinder(videos_dir)
    b = _Builder("msrvtt")
    if split == "train":
        rows = _read_csv(root / "MSRVTT_train.9k.csv", "msrvtt", ["video_id"])
        data = _read_json(root / "MSRVTT_data.json", "msrvtt")
        if not isinstance(data, dict) or "sentences" not in data:
            raise DatasetError(f"layout 'msrvtt': {root / 'MSRVTT_data.json'} has no 'sentences' list")
        for row in rows:
            vid = row["video_id"].strip()
            b.add_video(vid, find(vid))
        for sentence in data["sentences"]:
            vid = str(sentence.get("video_id", ""))
            if vid in b.index:
                b.add_caption(b.index[vid], sentence.get("caption"))
        return b.build()
    # Test (and our val) csvs hold the caption next to the video: one evaluation pair per row.
    name = "MSRVTT_JSFUSION_test.csv" if split == "test" else "MSRVTT_val.csv"
    why = "MSR-VTT has no official val csv; write one in the test csv's format" if split == "val" else ""
    for row in _read_csv(root / name, "msrvtt", ["video_id", "sentence"], why):
        vid = row["video_id"].strip()
        b.add_caption(b.add_video(vid, find(vid)), row["sentence"])
    return b.build()


def _load_didemo(root: Path, split: str, videos_dir: Path) -> Corpus:
    find = _VideoFinder(videos_dir)
    b = _Builder("didemo")
    entries = _read_json(root / f"{split}_data.json", "didemo")
    if not isinstance(entries, list):
        raise DatasetError(f"layout 'didemo': {root / f'{split}_data.json'} is not a list")
    # One paragraph per video, sentences in file order (as CLIP4Clip's paragraph retrieval).
    paragraphs: dict[str, list[str]] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "video" not in entry:
            raise DatasetError(f"layout 'didemo': entry {number} of {split}_data.json has no 'video' key")
        sentences = paragraphs.setdefault(str(entry["video"]), [])
        sentence = str(entry.get("description") or "").strip()
        if sentence:
            sentences.append(sentence)
    order = list(paragraphs)
    list_file = root / f"{split}_list.txt"
    if list_file.exists():
        # List and json may disagree on carrying an extension; match on the bare name.
        by_stem = {_strip_ext(v): v for v in paragraphs}
        listed = _read_list(list_file, "didemo")
        order = [by_stem[_strip_ext(v)] for v in listed if _strip_ext(v) in by_stem]
        if len(order) < len(listed):
            log.warning(
                "layout 'didemo': %d video(s) in %s have no description in %s_data.json; skipped",
                len(listed) - len(order),
                list_file,
                split,
            )
    for video in order:
        b.add_caption(b.add_video(video, find(video)), " ".join(paragraphs[video]))
    return b.build()


def _load_vatex(root: Path, split: str, videos_dir: Path) -> Corpus:
    find = _VideoFinder(videos_dir)
    b = _Builder("vatex")
    ids = _read_list(root / f"{split}_list.txt", "vatex")
    refs = _read_json(root / "ref_captions.json", "vatex")
    if not isinstance(refs, dict):
        raise DatasetError(f"layout 'vatex': {root / 'ref_captions.json'} is not an object")
    for vid in ids:
        v = b.add_video(vid, find(vid))
        captions = refs.get(vid, [])
        for caption in [captions] if isinstance(captions, str) else captions:
            b.add_caption(v, caption)
    return b.build()


def _jsonl_manifest(root: Path, split: str) -> Path:
    return root if root.is_file() else root / f"{split}.jsonl"


def _load_jsonl(root: Path, split: str, videos_dir: Path | None) -> Corpus:
    manifest = _require(_jsonl_manifest(root, split), "jsonl")
    base = videos_dir if videos_dir is not None else manifest.parent
    b = _Builder("jsonl")
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                video = Path(record["video"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"layout 'jsonl': {manifest} line {number} is not an object with a 'video' key ({exc})"
                ) from exc
            path = video if video.is_absolute() else base / video
            metadata = record.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise DatasetError(f"layout 'jsonl': {manifest} line {number}: 'metadata' must be a JSON object")
            v = b.add_video(str(record.get("video_id") or video.stem), path, metadata)
            captions = record.get("captions", record.get("caption", []))
            for caption in [captions] if isinstance(captions, str) else captions:
                b.add_caption(v, caption)
    return b.build()


def detect_layout(root: Path, split: str) -> str:
    """The layout whose files are present under `root`; DatasetError when none is."""
    root = Path(root)
    if root.is_file():
        if root.suffix == ".jsonl":
            return "jsonl"
        raise DatasetError(f"cannot detect a layout: {root} is a file but not a .jsonl manifest")
    if not root.is_dir():
        raise DatasetError(f"cannot detect a layout: dataset root {root} does not exist")
    if (root / "MSRVTT_data.json").exists() or any(root.glob("MSRVTT_*.csv")):
        return "msrvtt"
    if (root / "ref_captions.json").exists():
        return "vatex"
    if (root / f"{split}_data.json").exists() or any(root.glob("*_data.json")):
        return "didemo"
    if (root / f"{split}.jsonl").exists():
        return "jsonl"
    raise DatasetError(
        f"cannot detect a layout in {root}: expected MSRVTT_data.json / MSRVTT_*.csv (msrvtt), "
        f"ref_captions.json (vatex), {split}_data.json (didemo) or {split}.jsonl (jsonl)"
    )


def load_corpus(root: Path, split: str, layout: str = "auto", videos_dir: Path | None = None) -> Corpus:
    """Load split `split` of the corpus at `root` (a directory, or a .jsonl manifest).

    `videos_dir` replaces `<root>/videos`; for a JSONL manifest it replaces the manifest's folder
    as the base of relative video paths.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root, split)
        log.info("dataset %s: detected layout '%s'", root, layout)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected one of {('auto',) + LAYOUTS}")
    if layout == "jsonl":
        return _load_jsonl(root, split, Path(videos_dir) if videos_dir is not None else None)
    if split not in SPLITS:
        raise DatasetError(f"layout '{layout}': unknown split {split!r}; expected one of {SPLITS}")
    if not root.is_dir():
        raise DatasetError(f"layout '{layout}': dataset root {root} is not a directory")
    vdir = Path(videos_dir) if videos_dir is not None else root / "videos"
    loader = {"msrvtt": _load_msrvtt, "didemo": _load_didemo, "vatex": _load_vatex}[layout]
    return loader(root, split, vdir)


# ---------------------------------------------------------------------------------------------
# Training splits: a validation split carved from train when the layout has none

VAL_SHARE = 0.1  # share of the train videos carved out for validation when the layout has no val split
VAL_MAX = 1000  # at most this many videos (MSR-VTT's 9k train list gives 900)
_VAL_FILES = {"msrvtt": "MSRVTT_val.csv", "didemo": "val_data.json", "vatex": "val_list.txt", "jsonl": "val.jsonl"}


@dataclass(frozen=True)
class TrainingSplits:
    train: Corpus
    val: Corpus
    carved: list[str] | None  # the val video ids carved from train, None when the layout has a val split


def subset(corpus: Corpus, video_indices: Iterable[int]) -> Corpus:
    """The corpus restricted to some videos (in the order given) and their captions."""
    keep = list(video_indices)
    new_index = {old: new for new, old in enumerate(keep)}
    pairs = [(c, new_index[v]) for c, v in zip(corpus.captions, corpus.caption_video, strict=True) if v in new_index]
    return Corpus([corpus.videos[i] for i in keep], [c for c, _ in pairs], [v for _, v in pairs])


def has_split(root: Path, split: str, layout: str = "auto") -> bool:
    root = Path(root)
    if root.is_file():
        return split == "train"
    layout = detect_layout(root, split) if layout == "auto" else layout
    return (root / _VAL_FILES[layout]).exists() if split == "val" else True


def training_splits(
    root: Path, share: float = VAL_SHARE, seed: int = 0, layout: str = "auto", videos_dir: Path | None = None
) -> TrainingSplits:
    """Train and validation corpora. A layout without a validation split (MSR-VTT as published has
    no val csv) gets one carved from its train videos: a seeded `share` of them (at least 1, at most
    VAL_MAX), with all their captions, removed from train. An explicit val file always wins; test is
    never touched."""
    train = load_corpus(root, "train", layout, videos_dir)
    if has_split(root, "val", layout):
        return TrainingSplits(train, load_corpus(root, "val", layout, videos_dir), None)
    if not 0 < share < 1:
        raise DatasetError(f"{root} has no validation split and the share to carve from train is {share}")
    if len(train.videos) < 2:
        raise DatasetError(f"{root} has no validation split and too few train videos ({len(train.videos)}) to carve")
    # The draw depends on the sorted ids only, so the same corpus and seed give the same split
    # whatever the order of the train list.
    ids = sorted(v.video_id for v in train.videos)
    n_val = min(VAL_MAX, max(1, round(share * len(ids))), len(ids) - 1)
    chosen = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n_val]}
    val_idx = [i for i, v in enumerate(train.videos) if v.video_id in chosen]
    train_idx = [i for i, v in enumerate(train.videos) if v.video_id not in chosen]
    log.info(
        "dataset %s has no validation split: carved %d of %d train videos (share %.2f, seed %d) for validation",
        root,
        len(val_idx),
        len(ids),
        share,
        seed,
    )
    return TrainingSplits(subset(train, train_idx), subset(train, val_idx), [train.videos[i].video_id for i in val_idx])
