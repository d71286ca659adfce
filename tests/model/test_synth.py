from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from model.data.synth import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    SynthConfig,
    generate_corpus,
    render_events,
    write_mp4,
)
from ops.commands import synth

CFG = SynthConfig(videos=20, seed=3, size=32, frames_per_event=4)
TEXT_FILES = ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv")
EVAL_HEADER = ["key", "vid_key", "video_id", "sentence"]


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    out = {"a": root / "a", "b": root / "b", "other": root / "other"}
    generate_corpus(out["a"], CFG, progress=False)
    generate_corpus(out["b"], CFG, progress=False)
    generate_corpus(out["other"], SynthConfig(**{**CFG.__dict__, "seed": 4}), progress=False)
    return out


@pytest.fixture(scope="module")
def data(corpora) -> dict:
    return json.loads((corpora["a"] / "MSRVTT_data.json").read_text())


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def clauses(caption: str) -> list[str]:
    """The caption's event clauses in temporal order ("b after a" names the later event first)."""
    parts = re.split(r" and then | and after that | then | after ", caption.removeprefix("first "))
    return parts[::-1] if " after " in caption and " after that " not in caption else parts


def clause_spec(clause: str) -> dict[str, str]:
    """Attributes a clause names, parsed from its words alone; its shape identifies its event."""
    words = clause.split()
    shapes = [w for w in words if w in SHAPES]
    assert len(shapes) == 1, clause
    spec = {"shape": shapes[0]}
    for attr, values in (("color", COLORS), ("background", BACKGROUNDS)):
        spec.update((attr, w) for w in words if w in values)
    spec.update(("motion", m) for m, phrases in MOTIONS.items() if any(p in clause for p in phrases))
    return spec


def matches(spec: list[dict], events: list[dict]) -> bool:
    n = len(spec)
    return any(
        all(events[s + k][a] == v for k, part in enumerate(spec) for a, v in part.items())
        for s in range(len(events) - n + 1)
    )


def test_same_seed_same_corpus(corpora, data):
    for name in TEXT_FILES:
        assert (corpora["a"] / name).read_bytes() == (corpora["b"] / name).read_bytes(), name
    for v in data["videos"]:  # byte for byte: the encoder is deterministic (see model.data.video.write_mp4)
        rel = Path("videos") / f"{v['video_id']}.mp4"
        assert (corpora["a"] / rel).read_bytes() == (corpora["b"] / rel).read_bytes(), rel


def test_different_seed_different_corpus(corpora):
    a, other = corpora["a"], corpora["other"]
    assert (a / "MSRVTT_data.json").read_bytes() != (other / "MSRVTT_data.json").read_bytes()
    fa, fo = decode(a / "videos/video0.mp4"), decode(other / "videos/video0.mp4")
    assert fa.shape != fo.shape or not np.array_equal(fa, fo)


def test_layout_files_and_splits(corpora, data):
    root = corpora["a"]
    ids = [v["video_id"] for v in data["videos"]]
    assert ids == [f"video{i}" for i in range(CFG.videos)]
    split = {v["video_id"]: v["split"] for v in data["videos"]}
    assert set(split.values()) == {"train", "val", "test"}
    assert sorted((root / "videos").iterdir()) == sorted(root / "videos" / f"{i}.mp4" for i in ids)
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.partial"))

    header, train = read_csv(root / "MSRVTT_train.9k.csv")
    assert header == ["video_id"]
    assert [r["video_id"] for r in train] == [i for i in ids if split[i] == "train"]

    captions: dict[str, set[str]] = {}
    for s in data["sentences"]:
        assert set(s) >= {"video_id", "caption", "sen_id"}
        captions.setdefault(s["video_id"], set()).add(s["caption"])
    assert [s["sen_id"] for s in data["sentences"]] == list(range(len(data["sentences"])))
    assert set(captions) == set(ids) and all(len(c) >= 5 for c in captions.values())

    seen = {r["video_id"] for r in train}
    for name, which in (("MSRVTT_JSFUSION_test.csv", "test"), ("MSRVTT_val.csv", "val")):
        header, rows = read_csv(root / name)
        assert header == EVAL_HEADER
        vids = [r["video_id"] for r in rows]
        assert sorted(set(vids)) == sorted(i for i in ids if split[i] == which)
        # several distinct evaluation captions per video, the first round covering every video once
        per_video = {v: [r["sentence"] for r in rows if r["video_id"] == v] for v in set(vids)}
        assert all(1 <= len(c) <= CFG.eval_captions and len(set(c)) == len(c) for c in per_video.values())
        assert sum(len(c) for c in per_video.values()) > 2 * len(per_video)
        assert sorted(vids[: len(per_video)]) == sorted(per_video)
        for k, r in enumerate(rows):
            assert r["key"] == f"ret{k}" and r["vid_key"] == f"msr{r['video_id'][5:]}"
            assert r["sentence"] in captions[r["video_id"]]
        assert not seen & set(vids)
        seen |= set(vids)
    assert seen == set(ids)


def test_mp4s_decode_to_expected_frames(corpora, data):
    for v in data["videos"]:
        path = corpora["a"] / "videos" / f"{v['video_id']}.mp4"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
            assert stream.average_rate == CFG.fps
        frames = decode(path)
        assert frames.shape == (len(v["events"]) * CFG.frames_per_event, CFG.size, CFG.size, 3)
        assert v["frames"] == len(frames)
        assert [e["start"] for e in v["events"]] == list(range(0, len(frames), CFG.frames_per_event))


def test_decoded_frames_match_the_rendered_events(corpora, data):
    # Guards against a renderer/encoder mismatch (swapped channels, wrong frame order, wrong colours): the
    # decoded video is close to a fresh render of its stored events, and the object shows its colour.
    for v in data["videos"]:
        decoded = decode(corpora["a"] / "videos" / f"{v['video_id']}.mp4").astype(int)
        rendered = render_events(v["events"], CFG).astype(int)
        assert np.abs(decoded - rendered).mean() < 5.0, v["video_id"]  # x264 noise is ~2; a bug is tens
        for e in v["events"]:
            # Pixels fully inside the object in any frame of the event; yuv420p halves chroma resolution, so
            # small objects at 32 px lose some saturation, but far less than a wrong colour would show.
            block = slice(e["start"], e["end"])
            solid = (rendered[block] == COLORS[e["color"]]).all(-1)
            assert solid.sum() >= 4
            seen = np.median(decoded[block][solid], axis=0)
            assert np.abs(seen - COLORS[e["color"]]).max() < 60, (v["video_id"], e, seen)


def test_captions_describe_events_of_their_video(data):
    events_of = {v["video_id"]: v["events"] for v in data["videos"]}
    partial = 0
    for s in data["sentences"]:
        events = events_of[s["video_id"]]
        described = [events[i] for i in s["events"]]
        assert s["events"] == list(range(s["events"][0], s["events"][0] + len(s["events"])))  # consecutive
        specs = [clause_spec(c) for c in clauses(s["caption"])]
        assert [sp["shape"] for sp in specs] == [e["shape"] for e in described], s
        for spec, event in zip(specs, described, strict=True):
            assert all(event[a] == val for a, val in spec.items()), (s, event)
        assert s["caption"] == s["caption"].lower() and "," not in s["caption"]
        partial += len(described) < len(events)
    assert partial > 0.6 * len(data["sentences"])  # most captions describe part of their video


def test_eval_captions_name_their_video_alone(corpora, data):
    # The evaluation caption, parsed from its words, must be satisfied by its own video and by no other video
    # of the same split: retrieval is well posed.
    events_of = {v["video_id"]: v["events"] for v in data["videos"]}
    for name in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv"):
        _, rows = read_csv(corpora["a"] / name)
        for r in rows:
            spec = [clause_spec(c) for c in clauses(r["sentence"])]
            split_ids = sorted({o["video_id"] for o in rows})
            hits = [v for v in split_ids if matches(spec, events_of[v])]
            assert hits == [r["video_id"]], (r, hits)


def test_hard_negative_siblings_share_a_split(data):
    split = {v["video_id"]: v["split"] for v in data["videos"]}
    variants = [v for v in data["videos"] if v["variant"] != "base"]
    assert {v["variant"] for v in variants} >= {"swap_color", "reorder"}
    # Exact split sizes let a family spill into the next split only where one fills up: twice at most.
    straddling = {v["family"] for v in variants if split[v["variant_of"]] != v["split"]}
    assert len(straddling) <= 2
    for v in variants:
        base = next(b for b in data["videos"] if b["video_id"] == v["variant_of"])
        key = [(e["shape"], e["color"], e["motion"]) for e in v["events"]]
        assert key != [(e["shape"], e["color"], e["motion"]) for e in base["events"]]
        if v["variant"] == "reorder":  # same events, other order
            untimed = [
                [{k: x for k, x in e.items() if k not in ("start", "end")} for e in w["events"]] for w in (v, base)
            ]
            assert sorted(map(str, untimed[0])) == sorted(map(str, untimed[1]))


def test_mean_pooling_cannot_see_event_order(tmp_path, corpora, data):
    # Reordered siblings: nearly the same frame mean (what mean pooling sees) but different frames (what a
    # caption about part of the video is aligned with).
    pairs = [(v["video_id"], v["variant_of"]) for v in data["videos"] if v["variant"] == "reorder"]
    assert pairs
    for a, b in pairs:
        fa, fb = (decode(corpora["a"] / "videos" / f"{x}.mp4").astype(float) for x in (a, b))
        mean_gap = np.abs(fa.mean(0) - fb.mean(0)).mean()
        frame_gap = np.abs(fa - fb).mean()
        assert mean_gap < 1.5 and frame_gap > 10 * mean_gap, (a, b, mean_gap, frame_gap)
    # And directly from the renderer, at the default size.
    cfg = SynthConfig()
    ev = [
        {"shape": s, "color": c, "motion": m, "background": g, "params": {"dx": 0.0, "dy": 0.0, "scale": 1.0}}
        for s, c, m, g in (("circle", "red", "left", "gray"), ("square", "blue", "grow", "black"))
    ]
    for name, events in (("ab", ev), ("ba", ev[::-1])):
        write_mp4(tmp_path / f"{name}.mp4", render_events(events, cfg), cfg.fps)
    fa, fb = decode(tmp_path / "ab.mp4").astype(float), decode(tmp_path / "ba.mp4").astype(float)
    assert np.abs(fa.mean(0) - fb.mean(0)).mean() < 1.0 < 20 < np.abs(fa - fb).mean()


def test_rerun_reuses_a_corpus_and_refuses_foreign_dirs(tmp_path, corpora):
    out = tmp_path / "c"
    small = SynthConfig(**{**CFG.__dict__, "videos": 6})
    generate_corpus(out, CFG, progress=False)
    (out / "videos" / ".video1.mp4.x1y2_z3.tmp").write_bytes(b"half")  # as a killed run leaves it
    (out / "videos" / "video2.mp4.partial").write_bytes(b"half")  # as older versions left it
    summary = generate_corpus(out, small, progress=False)
    assert summary["videos"] == 6 and summary["train"] + summary["val"] + summary["test"] == 6
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"video{i}.mp4" for i in range(6)]
    generate_corpus(out, CFG, progress=False)  # back to the first config: the same bytes as before
    for name in TEXT_FILES:
        assert (out / name).read_bytes() == (corpora["a"] / name).read_bytes()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_corpus(foreign, small, progress=False)
    with pytest.raises(ValueError):
        SynthConfig(videos=0)


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="glccl")
    synth.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_writes_a_corpus_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "cli"
    args = cli(["synth", "--out", str(out), "--videos", "4", "--size", "32", "--no-progress"])
    assert args.func(args) == 0
    assert "4 videos" in capsys.readouterr().out
    assert json.loads((out / "MSRVTT_data.json").read_text())["videos"]

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    for argv in (
        ["--out", str(out), "--videos", "0"],
        ["--out", str(out), "--size", "33"],
        ["--out", str(tmp_path / "foreign")],
        ["--out", str(tmp_path / "foreign" / "x")],
    ):
        args = cli(["synth", *argv, "--no-progress"])
        with pytest.raises(SystemExit) as exc:
            args.func(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("glccl synth: error:") and err.count("\n") == 1


def test_event_clips_show_one_event_of_a_train_or_val_video(corpora, data):
    # The pretraining clips (the stand-in for CLIP's image-text pairs): one clip per event of every train
    # and val video, its frames those of that event in the full video, every caption about that event alone.
    from model.data.datasets import load_corpus

    root = corpora["a"] / "events"
    videos = {v["video_id"]: v for v in data["videos"]}
    for split in ("train", "val"):
        corpus = load_corpus(root, split)
        want = [f"{v['video_id']}_e{k}" for v in data["videos"] if v["split"] == split for k in range(len(v["events"]))]
        assert sorted(item.video_id for item in corpus.videos) == sorted(want)
        for i, item in enumerate(corpus.videos):
            vid, k = item.video_id.rsplit("_e", 1)
            video, event = videos[vid], videos[vid]["events"][int(k)]
            full = decode(corpora["a"] / "videos" / f"{vid}.mp4").astype(int)
            clip = decode(item.path).astype(int)
            assert clip.shape[0] == CFG.frames_per_event
            assert np.abs(clip - full[event["start"] : event["end"]]).mean() < 5.0, item.video_id
            captions = corpus.captions_of(i)
            assert captions and len(set(captions)) == len(captions)
            for caption in captions:
                (spec,) = [clause_spec(c) for c in clauses(caption)]
                assert matches([spec], [event]), (caption, event)
            assert video["split"] == split


def test_top_k_check_counts_binding_misses_apart():
    from model.data.synth_check import count_named, named_shape_colour

    assert named_shape_colour("a red circle moves left") == ("circle", "red")
    assert named_shape_colour("a red circle then a blue square") is None  # two of each: not one event
    shows = {
        "both": {("circle", "red"), ("square", "blue")},
        "split": {("circle", "blue"), ("square", "red")},  # red and circle, on different events
        "colour": {("square", "red")},
        "neither": {("triangle", "green")},
    }
    result = count_named([["both", "both"], ["both", "split"], ["colour", "neither"]], [("circle", "red")] * 3, shows)
    assert result["share"] == pytest.approx(1 / 3)  # only the first query's results all show a red circle
    assert result["results_with_both"] == pytest.approx(3 / 6)
    assert result["results_with_colour"] == pytest.approx(5 / 6)
    assert result["results_with_shape"] == pytest.approx(4 / 6)
