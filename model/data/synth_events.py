"""Single-event clips of the synthetic corpus: the stand-in for CLIP's image-text pretraining.

The published heads all start from CLIP, whose image features already match the words of a caption
frame by frame. CLIP cannot be downloaded here, so `glccl ablate --pretrain-data DIR/events` first
trains the towers contrastively on short clips that each show one event, paired with captions of
that event alone: pairs as clean as CLIP's image-text pairs, with no head's pooling built in. Only
train and validation videos are cut into clips; the test split is never seen.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model.data.synth_render import render_frames
from model.data.video import write_mp4
from model.io import atomic_write_text

log = logging.getLogger(__name__)

EVENTS_DIR = "events"  # under the corpus folder: videos/ and {train,val}.jsonl (the JSONL layout)


def write_event_clips(
    out_dir: Path,
    clips: dict[str, list[tuple[str, dict[str, Any], list[str]]]],
    size: int,
    frames_per_event: int,
    fps: int,
    progress: bool = True,
) -> dict[str, int]:
    """clips: split -> [(clip_id, event, captions)]; writes out_dir/events, returns clips per split."""
    root = out_dir / EVENTS_DIR
    if root.exists():  # a rerun starts clean: no manifest may list a clip of an earlier corpus
        shutil.rmtree(root)
    videos = root / "videos"
    videos.mkdir(parents=True)
    total = sum(len(v) for v in clips.values())
    bar = tqdm(total=total, desc="synth event clips", unit="clip", disable=not progress)
    for split, items in clips.items():
        lines = []
        for clip_id, event, captions in items:
            write_mp4(videos / f"{clip_id}.mp4", render_frames([event], size, frames_per_event), fps)
            lines.append(json.dumps({"video": f"videos/{clip_id}.mp4", "video_id": clip_id, "captions": captions}))
            bar.update()
        atomic_write_text(root / f"{split}.jsonl", "\n".join(lines) + "\n")
    bar.close()
    return {split: len(items) for split, items in clips.items()}
