"""The second synthetic style: the public MSR-VTT layout, other vocabulary and renderer, unique test captions."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from model.data.datasets import load_corpus, training_splits
from model.data.synth_captions import MOTIONS
from model.data.synth_render import COLORS, SHAPES
from model.data.synth_sprites import MOVES, SPRITES, TINTS, SpritesConfig, _matches, generate_sprites
from ops.commands import synth

CFG = SpritesConfig(videos=40, seed=2, size=32, min_event_frames=3, max_event_frames=6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sprites") / "a"
    generate_sprites(out, CFG, progress=False)
    return out


def frames_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_the_vocabulary_shares_nothing_with_the_shapes_style():
    assert not set(SPRITES) & set(SHAPES)
    assert not set(TINTS) & set(COLORS)
    assert not {p[0] for p in MOVES.values()} & {p[0] for p in MOTIONS.values()}


def test_public_layout_without_val_csv_and_split_sizes(corpus):
    assert sorted(p.name for p in corpus.iterdir() if p.is_file()) == [
        "MSRVTT_JSFUSION_test.csv",
        "MSRVTT_data.json",
        "MSRVTT_train.9k.csv",
        "synth_config.json",
    ]
    train, test = load_corpus(corpus, "train"), load_corpus(corpus, "test")
    assert len(train.videos) == 32 and len(test.videos) == 8
    assert not {v.video_id for v in train.videos} & {v.video_id for v in test.videos}
    splits = training_splits(corpus)  # training carves its own validation videos
    assert splits.carved and not set(splits.carved) & {v.video_id for v in splits.train.videos}


def test_videos_have_the_lengths_frame_rate_and_events_the_json_says(corpus):
    data = json.loads((corpus / "MSRVTT_data.json").read_text())
    lengths = set()
    for record in data["videos"][:10]:
        frames = frames_of(corpus / "videos" / f"{record['video_id']}.mp4")
        assert frames.shape == (record["frames"], CFG.size, CFG.size, 3)
        assert len(record["events"]) == CFG.events
        assert record["events"][-1]["end"] == record["frames"]
        with av.open(str(corpus / "videos" / f"{record['video_id']}.mp4")) as c:
            assert c.streams.video[0].average_rate == CFG.fps
        lengths.add(record["frames"])
        # each event's sprite is drawn in its tint: the tint is the most common bright colour of its frames
        for e in record["events"]:
            block = frames[e["start"] : e["end"]].reshape(-1, 3).astype(int)
            tint = np.array(TINTS[e["tint"]])
            near = np.abs(block - tint).sum(-1) < 60
            assert near.any() or e["motion"] == "blink", e
    assert len(lengths) > 1  # video lengths vary


def test_every_test_caption_names_its_video_alone_in_the_split(corpus):
    data = json.loads((corpus / "MSRVTT_data.json").read_text())
    events = {v["video_id"]: v["events"] for v in data["videos"] if v["split"] == "test"}
    with (corpus / "MSRVTT_JSFUSION_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= len(events)
    vocab = set(SPRITES) | set(TINTS) | {"small", "large"}
    for row in rows:
        words = set(row["sentence"].replace(",", " ").replace(";", " ").split())
        named = [s for s in SPRITES if s in words]
        assert 1 <= len(named) <= 2 and words & vocab, row
        assert row["video_id"] in events


def test_the_matcher_reads_order_and_every_named_attribute():
    video = [
        {"sprite": "heart", "tint": "cyan", "motion": "spin", "size": "small"},
        {"sprite": "bar", "tint": "gold", "motion": "fall", "size": "large"},
    ]
    assert _matches([{"sprite": "heart", "tint": "cyan"}, {"sprite": "bar"}], video)
    assert not _matches([{"sprite": "bar"}, {"sprite": "heart"}], video)
    assert not _matches([{"sprite": "heart", "size": "large"}], video)


def test_same_seed_same_bytes_other_seed_other_corpus(corpus, tmp_path):
    again = tmp_path / "again"
    generate_sprites(again, CFG, progress=False)
    for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes()
    other = tmp_path / "other"
    generate_sprites(other, SpritesConfig(**{**CFG.__dict__, "seed": 3}), progress=False)
    assert (other / "MSRVTT_data.json").read_bytes() != (corpus / "MSRVTT_data.json").read_bytes()


def test_cli_style_option_and_options_of_the_other_style(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="glccl")
    synth.add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(["synth", "--style", "sprites", "--out", str(out), "--videos", "6", "--no-progress"])
    assert args.func(args) == 0
    assert "synth (sprites): 6 videos" in capsys.readouterr().out
    args = parser.parse_args(["synth", "--style", "sprites", "--out", str(out), "--frames-per-event", "4"])
    with pytest.raises(SystemExit) as exc:
        args.func(args)
    assert exc.value.code == 2
    assert "--frames-per-event does not apply to style 'sprites'" in capsys.readouterr().err
