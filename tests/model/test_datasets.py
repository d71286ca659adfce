"""Corpus loaders for each layout, auto-detection, errors, and the torch datasets over them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data.clips import VideoDataset, VideoTextTrainDataset, collate_skip_bad
from model.data.datasets import (
    Corpus,
    DatasetError,
    VideoItem,
    detect_layout,
    load_corpus,
    training_splits,
)
from model.data.video import FrameCache, write_mp4


def write_video(path: Path, num_frames: int = 6, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.arange(num_frames, dtype=np.uint8)[:, None, None, None] * 20
    return write_mp4(path, np.broadcast_to(grey, (num_frames, size, size, 3)), fps=10)


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


# ---------------------------------------------------------------------------------------------
# Layouts


@pytest.fixture
def msrvtt(tmp_path: Path) -> Path:
    data = {
        "videos": [{"video_id": f"video{i}"} for i in range(4)],
        "sentences": [
            {"video_id": "video0", "caption": "a cat", "sen_id": 0},
            {"video_id": "video2", "caption": "a dog ", "sen_id": 1},
            {"video_id": "video0", "caption": "a cat sleeps", "sen_id": 2},
            {"video_id": "video1", "caption": "a car", "sen_id": 3},
            {"video_id": "video3", "caption": "test only", "sen_id": 4},
            {"video_id": "video1", "caption": "   ", "sen_id": 5},
        ],
    }
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    write_csv(tmp_path / "MSRVTT_train.9k.csv", "video_id", ["video0", "video1", "video2"])
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence", ["ret0,msr3,video3,a bird"])
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "video0.mp4").write_bytes(b"x")
    (tmp_path / "videos" / "video1.webm").write_bytes(b"x")
    return tmp_path


def test_msrvtt_train_uses_every_caption_of_train_videos(msrvtt, caplog):
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(msrvtt, "train")
    assert [v.video_id for v in corpus.videos] == ["video0", "video1", "video2"]
    assert corpus.captions == ["a cat", "a dog", "a cat sleeps", "a car"]
    assert corpus.caption_video == [0, 2, 0, 1]
    assert corpus.captions_of(0) == ["a cat", "a cat sleeps"]
    assert corpus.caption_indices() == [[0, 2], [3], [1]]
    assert "empty caption" in caplog.text
    assert corpus.videos[0].path == msrvtt / "videos" / "video0.mp4"
    assert corpus.videos[1].path == msrvtt / "videos" / "video1.webm"
    # Missing files are kept; decoding reports them.
    assert corpus.videos[2].path == msrvtt / "videos" / "video2.mp4"


def test_msrvtt_test_and_val_take_captions_from_the_csv(msrvtt, tmp_path):
    corpus = load_corpus(msrvtt, "test", layout="msrvtt")
    assert [v.video_id for v in corpus.videos] == ["video3"]
    assert corpus.captions == ["a bird"] and corpus.caption_video == [0]

    with pytest.raises(DatasetError, match=r"MSRVTT_val\.csv.*missing") as err:
        load_corpus(msrvtt, "val")
    assert "msrvtt" in str(err.value)
    write_csv(msrvtt / "MSRVTT_val.csv", "key,vid_key,video_id,sentence", ["a,b,video1,x", "c,d,video2,y"])
    other = tmp_path / "elsewhere"
    corpus = load_corpus(msrvtt, "val", videos_dir=other)
    assert corpus.captions == ["x", "y"]
    assert corpus.videos[0].path == other / "video1.mp4"


@pytest.fixture
def msrvtt_no_val(tmp_path: Path) -> Path:
    """The public MSR-VTT layout: train list, test csv, no val csv; 40 train videos of 2 captions."""
    train = [f"video{i}" for i in range(40)]
    sentences = [
        {"video_id": v, "caption": f"clip {v} take {k}", "sen_id": 2 * i + k}
        for i, v in enumerate(train)
        for k in range(2)
    ]
    sentences.append({"video_id": "video99", "caption": "the test video", "sen_id": 999})
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    write_csv(tmp_path / "MSRVTT_train.9k.csv", "video_id", train)
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence", ["r0,m99,video99,a test"])
    return tmp_path


def test_a_layout_without_val_gets_one_carved_from_train(msrvtt_no_val, caplog):
    with caplog.at_level(logging.INFO):
        splits = training_splits(msrvtt_no_val)
    assert "no validation split: carved 4 of 40 train videos" in caplog.text
    train_ids = {v.video_id for v in splits.train.videos}
    val_ids = {v.video_id for v in splits.val.videos}
    test_ids = {v.video_id for v in load_corpus(msrvtt_no_val, "test").videos}
    assert len(val_ids) == 4 and len(train_ids) == 36
    assert not train_ids & val_ids and not (train_ids | val_ids) & test_ids
    assert sorted(splits.carved) == sorted(val_ids)
    # every caption of a carved video moves with it, and the captions stay with their own video
    assert len(splits.val.captions) == 8 and len(splits.train.captions) == 72
    for caption, v in zip(splits.val.captions, splits.val.caption_video, strict=True):
        assert splits.val.videos[v].video_id in caption
    # deterministic: the same corpus and seed give the same split, whatever the train list's order
    assert training_splits(msrvtt_no_val).carved == splits.carved
    rows = (msrvtt_no_val / "MSRVTT_train.9k.csv").read_text().splitlines()
    write_csv(msrvtt_no_val / "MSRVTT_train.9k.csv", "video_id", rows[:0:-1])
    assert set(training_splits(msrvtt_no_val).carved) == val_ids
    assert set(training_splits(msrvtt_no_val, seed=1).carved) != val_ids
    assert len(training_splits(msrvtt_no_val, share=0.25).carved) == 10


def test_an_explicit_val_file_wins_over_carving(msrvtt_no_val):
    write_csv(msrvtt_no_val / "MSRVTT_val.csv", "key,vid_key,video_id,sentence", ["a,b,video3,three"])
    splits = training_splits(msrvtt_no_val)
    assert splits.carved is None
    assert splits.val.captions == ["three"] and len(splits.train.videos) == 40


def test_msrvtt_missing_json_names_file_and_layout(msrvtt):
    (msrvtt / "MSRVTT_data.json").unlink()
    with pytest.raises(DatasetError, match=r"msrvtt.*MSRVTT_data\.json"):
        load_corpus(msrvtt, "train")


@pytest.fixture
def didemo(tmp_path: Path) -> Path:
    entries = [
        {"video": "v1.mov", "description": "a man walks in.", "times": [[0, 1]]},
        {"video": "v2.mov", "description": "a dog barks.", "times": [[0, 0]]},
        {"video": "v1.mov", "description": " he sits down. ", "times": [[2, 3]]},
        {"video": "v3.mov", "description": "not in the list", "times": [[1, 1]]},
        {"video": "v1.mov", "description": "", "times": [[4, 4]]},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    (tmp_path / "test_list.txt").write_text("v2\nv1\nmissing\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v1.mov.mp4").write_bytes(b"x")  # CLIP4Clip's converted names
    (tmp_path / "videos" / "v2.mp4").write_bytes(b"x")
    return tmp_path


def test_didemo_joins_descriptions_into_one_paragraph(didemo, caplog):
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(didemo, "test")
    # List order and membership; v3 is not listed, "missing" has no descriptions.
    assert [v.video_id for v in corpus.videos] == ["v2.mov", "v1.mov"]
    assert corpus.captions == ["a dog barks.", "a man walks in. he sits down."]
    assert corpus.caption_video == [0, 1]
    assert corpus.videos[0].path == didemo / "videos" / "v2.mp4"
    assert corpus.videos[1].path == didemo / "videos" / "v1.mov.mp4"
    assert "have no description" in caplog.text


def test_didemo_without_list_keeps_json_order(didemo):
    (didemo / "test_list.txt").unlink()
    corpus = load_corpus(didemo, "test", layout="didemo")
    assert [v.video_id for v in corpus.videos] == ["v1.mov", "v2.mov", "v3.mov"]
    assert corpus.captions_of(0) == ["a man walks in. he sits down."]
    with pytest.raises(DatasetError, match=r"didemo.*train_data\.json"):
        load_corpus(didemo, "train", layout="didemo")


@pytest.fixture
def vatex(tmp_path: Path) -> Path:
    (tmp_path / "test_list.txt").write_text("a_000001_000011\nb_000002_000012\n")
    refs = {"a_000001_000011": ["one", "two", " three "], "b_000002_000012": ["four", ""], "c": ["x"]}
    (tmp_path / "ref_captions.json").write_text(json.dumps(refs))
    return tmp_path


def test_vatex_keeps_several_captions_per_video(vatex):
    corpus = load_corpus(vatex, "test")
    assert [v.video_id for v in corpus.videos] == ["a_000001_000011", "b_000002_000012"]
    assert corpus.captions == ["one", "two", "three", "four"]
    assert corpus.caption_video == [0, 0, 0, 1]
    assert corpus.videos[1].path == vatex / "videos" / "b_000002_000012.mp4"
    with pytest.raises(DatasetError, match=r"vatex.*val_list\.txt"):
        load_corpus(vatex, "val")


def test_jsonl_manifest_as_file_or_split_in_folder(tmp_path):
    lines = [
        {"video": "clips/cat.mp4", "captions": ["a cat", " "]},
        {"video": "/abs/dog.mp4", "captions": ["a dog", "a puppy"], "video_id": "dog-1"},
        {"video": "bird.webm", "captions": "a bird"},
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    for corpus in (load_corpus(manifest, "whatever"), load_corpus(tmp_path, "train")):
        assert [v.video_id for v in corpus.videos] == ["cat", "dog-1", "bird"]
        assert [v.path for v in corpus.videos] == [
            tmp_path / "clips" / "cat.mp4",
            Path("/abs/dog.mp4"),
            tmp_path / "bird.webm",
        ]
        assert corpus.captions == ["a cat", "a dog", "a puppy", "a bird"]
        assert corpus.caption_video == [0, 1, 1, 2]
    assert load_corpus(manifest, "x", videos_dir=tmp_path / "v").videos[0].path == tmp_path / "v/clips/cat.mp4"

    manifest.write_text('{"video": "a.mp4", "captions": ["x"]}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2"):
        load_corpus(manifest, "train")
    with pytest.raises(DatasetError, match=r"jsonl.*val\.jsonl"):
        load_corpus(tmp_path, "val", layout="jsonl")


def test_auto_detection(msrvtt, tmp_path_factory):
    assert detect_layout(msrvtt, "train") == "msrvtt"
    root = tmp_path_factory.mktemp("vatex")
    (root / "ref_captions.json").write_text("{}")
    assert detect_layout(root, "test") == "vatex"
    root = tmp_path_factory.mktemp("didemo")
    (root / "train_data.json").write_text("[]")
    assert detect_layout(root, "test") == "didemo"
    root = tmp_path_factory.mktemp("jsonl")
    (root / "val.jsonl").write_text("")
    assert detect_layout(root, "val") == "jsonl"
    assert detect_layout(root / "val.jsonl", "anything") == "jsonl"


def test_errors_for_unknown_layout_split_and_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown layout 'kinetics'"):
        load_corpus(tmp_path, "train", layout="kinetics")
    with pytest.raises(DatasetError, match=r"cannot detect a layout.*MSRVTT_data\.json"):
        load_corpus(tmp_path, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_corpus(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_corpus(tmp_path, "dev", layout="vatex")
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------------
# Torch datasets


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Corpus:
    """Three good videos, one missing, one corrupt."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    videos = [
        VideoItem("good0", write_video(tmp_path / "good0.mp4")),
        VideoItem("missing", tmp_path / "missing.mp4"),
        VideoItem("good1", write_video(tmp_path / "good1.mp4", num_frames=3)),
        VideoItem("bad", bad),
        VideoItem("good2", write_video(tmp_path / "good2.mp4")),
    ]
    captions = ["g0 a", "g0 b", "g0 c", "m", "g1", "b", "g2 a", "g2 b"]
    return Corpus(videos, captions, [0, 0, 0, 1, 2, 3, 4, 4])


def test_train_dataset_skips_bad_videos_and_counts_them(mixed_corpus, caplog):
    ds = VideoTextTrainDataset(mixed_corpus, num_frames=4, image_size=16, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=collate_skip_bad)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # warned once per video, however many epochs
            (batch,) = list(loader)
    assert ds.skipped == {"missing", "bad"}
    assert caplog.text.count("skipping video missing") == 1
    assert caplog.text.count("skipping video bad") == 1
    assert batch["frames"].shape == (3, 4, 3, 16, 16)
    assert batch["frame_mask"].shape == (3, 4) and batch["times"].shape == (3, 4)
    assert batch["frame_mask"][1].tolist() == [True, True, True, False]  # good1 has 3 frames
    assert batch["video_index"].tolist() == [0, 2, 4]
    assert batch["num_dropped"] == 2
    for caption, v in zip(batch["caption"], batch["video_index"].tolist(), strict=True):
        assert caption in mixed_corpus.captions_of(v)


def test_train_caption_draw_is_seeded_and_changes_with_epoch(tmp_path):
    videos = [VideoItem(f"v{i}", tmp_path / f"v{i}.mp4") for i in range(3)]
    captions = [f"v{v} c{c}" for v in range(3) for c in range(10)]
    corpus = Corpus(videos, captions, [v for v in range(3) for _ in range(10)])
    path = write_video(tmp_path / "v.mp4")
    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(path.read_bytes())

    def draws(seed: int, epoch: int) -> list[str]:
        ds = VideoTextTrainDataset(corpus, num_frames=2, image_size=16, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["caption"] for i in range(len(ds))]

    assert draws(0, 0) == draws(0, 0)
    assert all(c.startswith(f"v{i} ") for i, c in enumerate(draws(0, 0)))
    epochs = {tuple(draws(0, e)) for e in range(6)}
    assert len(epochs) > 1


def test_train_dataset_leaves_out_videos_without_captions(tmp_path):
    corpus = Corpus([VideoItem("a", tmp_path / "a.mp4"), VideoItem("b", tmp_path / "b.mp4")], ["x"], [1])
    ds = VideoTextTrainDataset(corpus, num_frames=2, image_size=16)
    assert len(ds) == 1 and ds.video_indices == [1]


def test_video_dataset_with_cache(mixed_corpus, tmp_path):
    cache = FrameCache(tmp_path / "cache", num_frames=4, image_size=16)
    ds = VideoDataset(mixed_corpus, num_frames=4, image_size=16, cache=cache)
    assert len(ds) == 5
    assert ds[1] is None and ds[3] is None
    batch = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert batch["video_id"] == ["good0", "good1", "good2"]
    assert batch["video_index"].tolist() == [0, 2, 4]
    assert ds.skipped == {"missing", "bad"}
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3
    again = VideoDataset(mixed_corpus, num_frames=4, image_size=16, cache=cache)[0]
    assert torch.equal(again["frames"], ds[0]["frames"])
    with pytest.raises(ValueError, match="frame cache"):
        VideoDataset(mixed_corpus, num_frames=8, image_size=16, cache=cache)


def test_collate_returns_none_when_every_item_is_bad():
    assert collate_skip_bad([None, None]) is None
    assert collate_skip_bad([]) is None
