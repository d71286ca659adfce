from __future__ import annotations

import json

import pytest
import torch

from model.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint, read_config, save_checkpoint
from model.glccl import RetrievalModel, make_config


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=8)).eval()
    with torch.no_grad():
        model.head.global_mix.add_(0.1)
    return model, save_checkpoint(model, tmp_path / "ckpt", metadata={"step": 3})


def test_round_trip_gives_the_same_scores(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(path).eval()
    tokens = model.tokenizer()(["a red circle", "two blue squares"])
    frames, mask = torch.randn(3, 4, 3, 32, 32), torch.ones(3, 4, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, frames, mask)["S"], model(tokens, frames, mask)["S"])
    assert read_config(path) == model.config
    assert len(checkpoint_hash(path)) == 64


def test_incompatible_checkpoint_says_what_differs(saved):
    model, path = saved
    want = make_config("xclip", backbone="glccl-test", num_frames=12, max_words=8)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect=want)
    assert "head: 'xclip' != 'glccl'" in str(err.value)
    assert "num_frames: 12 != 4" in str(err.value)


def test_weights_that_do_not_fit_the_config_are_refused(saved):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_frames"] = 6  # the frame position embedding no longer fits
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches: video.temporal.position.weight"):
        load_checkpoint(path)


def test_damaged_or_foreign_checkpoints_are_refused(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
