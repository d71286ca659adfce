"""Does a search name the right thing? On a synthetic corpus the events of every video are known.

For every one-event validation caption of a `glccl synth` corpus that names a shape and a colour,
the whole corpus (every split, as the demo serves it) is ranked with the model's score S, and we ask
whether each of the top k videos shows an object of that shape and that colour in some event.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from model.data.datasets import Corpus, VideoItem
from model.data.synth_render import COLORS, SHAPES
from model.data.video import FrameCache
from model.evaluate import encode_texts, encode_videos
from model.glccl import RetrievalModel
from model.scoring import score_chunked


def named_shape_colour(caption: str) -> tuple[str, str] | None:
    """(shape, colour) when the caption names exactly one of each, else None."""
    words = re.findall(r"[a-z]+", caption.lower())
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLORS]
    return (shapes[0], colours[0]) if len(shapes) == 1 and len(colours) == 1 else None


@torch.no_grad()
def top_k_shows_named(model: RetrievalModel, data_dir: Path, k: int = 3, split: str = "val") -> dict[str, Any]:
    """Share of the split's one-event captions (naming a shape and a colour) whose top k all show both."""
    data = json.loads((Path(data_dir) / "MSRVTT_data.json").read_text())
    records = data["videos"]
    split_ids = {r["video_id"] for r in records if r["split"] == split}
    queries = [
        (s["caption"], named)
        for s in data["sentences"]
        if s["video_id"] in split_ids and len(s.get("events", [])) == 1
        for named in [named_shape_colour(s["caption"])]
        if named is not None
    ]
    queries = list(dict.fromkeys(queries))
    if not queries:
        raise ValueError(f"{data_dir} has no one-event {split} caption naming a shape and a colour")
    videos = [VideoItem(r["video_id"], Path(data_dir) / "videos" / f"{r['video_id']}.mp4") for r in records]
    corpus = Corpus(videos, [], [])
    model.eval()
    cache = FrameCache(Path(data_dir) / ".cache" / "frames", model.config.num_frames, model.image_size)
    video, kept, _ = encode_videos(model, corpus, cache)
    ids = [videos[i].video_id for i in kept]
    shows = {r["video_id"]: {(e["shape"], e["color"]) for e in r["events"]} for r in records}
    text = encode_texts(model, [q for q, _ in queries])
    scores = score_chunked(model.head, text, video)["S"]  # [Nq, Nv]
    top = scores.topk(k, dim=1).indices.tolist()
    result = count_named([[ids[j] for j in row] for row in top], [named for _, named in queries], shows)
    return {"queries": len(queries), "k": k, "videos": len(ids), **result}


def count_named(
    top: list[list[str]], named: list[tuple[str, str]], shows: dict[str, set[tuple[str, str]]]
) -> dict[str, float]:
    """For queries naming (shape, colour) and their top results' ids, with what each video shows:
    the share of queries whose results all show that object, and per result the share with the
    colour, the shape, and both in one event (colour and shape on different events is a binding miss)."""
    hits = [all(want in shows[v] for v in row) for row, want in zip(top, named, strict=True)]
    items = [(shows[v], want) for row, want in zip(top, named, strict=True) for v in row]
    return {
        "share": sum(hits) / len(hits),
        "results_with_colour": sum(any(c == want[1] for _, c in seen) for seen, want in items) / len(items),
        "results_with_shape": sum(any(s == want[0] for s, _ in seen) for seen, want in items) / len(items),
        "results_with_both": sum(want in seen for seen, want in items) / len(items),
    }
