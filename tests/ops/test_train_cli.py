from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from model.data.datasets import load_corpus
from ops.commands.cli import main

TINY = ["--backbone", "glccl-test", "--frames", "4", "--words", "12", "--batch-size", "4", "--seed", "3"]


def train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), *TINY, *extra]


def test_two_training_steps_through_the_cli(small_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(small_corpus, out, "--max-steps", "2", "--eval-every", "1")) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["steps"] == 2
    for name in ("best/model.safetensors", "best/config.json", "last/config.json", "trainer_state.pt"):
        assert (out / name).is_file(), name
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_val_rsum"] >= 0


def test_resume_continues_exactly_where_it_stopped(small_corpus, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(small_corpus, straight, "--max-steps", "4")) == 0
    assert main(train_args(small_corpus, resumed, "--max-steps", "4", "--stop-after", "2")) == 0
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 2
    assert main(train_args(small_corpus, resumed, "--max-steps", "4", "--resume")) == 0
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 4
    a = load_file(straight / "last" / "model.safetensors")
    b = load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


def test_resume_without_a_run_is_a_clear_error(small_corpus, tmp_path, capsys):
    assert main(train_args(small_corpus, tmp_path / "none", "--resume")) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_a_corrupt_video_is_skipped_not_a_crash(corpus_copy, tmp_path):
    train_ids = load_corpus(corpus_copy, "train").videos
    (corpus_copy / "videos" / f"{train_ids[0].video_id}.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "run"
    assert main(train_args(corpus_copy, out, "--max-steps", "3")) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_videos"] == [train_ids[0].video_id]


def test_evaluate_writes_the_metrics_json(small_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(small_corpus, out, "--max-steps", "1")) == 0
    metrics_path = tmp_path / "metrics.json"
    argv = ["evaluate", "--checkpoint", str(out / "best"), "--data", str(small_corpus), "--json", str(metrics_path)]
    assert main(argv) == 0
    assert "| t2v R1 |" in capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    test = load_corpus(small_corpus, "test")
    n_test = len(test.videos)
    assert metrics["videos"] == n_test and metrics["captions"] == len(test.captions) > n_test
    for direction in ("t2v", "v2t"):
        m = metrics[direction]
        assert set(m) == {"R1", "R5", "R10", "MdR", "MnR"}
        assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100
        assert 1 <= m["MdR"] <= n_test
    assert set(metrics["dsl"]) == {"t2v", "v2t"}


def test_ablate_trains_every_head_over_seeds_from_shared_towers(small_corpus, tmp_path):
    out = tmp_path / "ablation"
    argv = ["ablate", "--data", str(small_corpus), "--out", str(out), "--heads", "meanP", "glccl", *TINY]
    assert main([*argv, "--max-steps", "1", "--towers-epochs", "1", "--seeds", "2"]) == 0
    table = (out / "ablation.md").read_text()
    assert "| meanP |" in table and "| glccl |" in table and "2 seed(s)" in table
    result = json.loads((out / "ablation.json").read_text())
    assert result["seeds"] == [3, 4] and set(result["heads"]) == {"meanP", "glccl"}
    assert result["test_queries"] == len(load_corpus(small_corpus, "test").captions)
    assert [r["seed"] for r in result["runs"]["glccl"]] == [3, 4]
    for seed in (3, 4):
        towers = load_file(out / f"seed{seed}" / "towers" / "best" / "model.safetensors")
        tuned = load_file(out / f"seed{seed}" / "glccl" / "last" / "model.safetensors")
        key = "text.token_embedding.weight"  # GLCCL started from this seed's towers: one step away from them
        assert (tuned[key] - towers[key]).abs().max() < 1e-2
        assert not (out / f"seed{seed}" / "meanP" / "towers").exists()  # meanP is its own warm-up
    r1 = result["heads"]["glccl"]["t2v"]["R1"]
    assert r1["std"] >= 0 and r1["mean"] == sum(r["t2v"]["R1"] for r in result["runs"]["glccl"]) / 2


def test_ablate_sweeps_csc_and_tau_on_validation(small_corpus, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", "--data", str(small_corpus), "--out", str(out), "--heads", "glccl", *TINY]
    assert main([*argv, "--max-steps", "1", "--towers-epochs", "1", "--csc-weight", "0.1", "0.5"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    grid = result["sweep"]["grid"]
    assert [g["csc_weight"] for g in grid] == [0.1, 0.5] and {g["tau_g"] for g in grid} == {50.0}
    best = max(grid, key=lambda g: g["best_val_rsum"])
    assert result["sweep"]["chosen"] == {"csc_weight": best["csc_weight"], "tau_g": 50.0}
    config = json.loads((out / "seed3" / "glccl" / "best" / "config.json").read_text())
    assert config["csc_weight"] == best["csc_weight"]
    assert "chosen on validation" in capsys.readouterr().out


def test_from_scratch_training_warms_the_towers_up_then_trains_the_head(small_corpus, tmp_path):
    out = tmp_path / "run"
    argv = train_args(small_corpus, out, "--head", "glccl", "--max-steps", "2", "--towers-epochs", "1")
    assert main([*argv, "--head-lr-clip", "2e-4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"]["towers"]["head"] == "meanP" and summary["recipe"]["towers"]["epochs"] == 1
    assert summary["recipe"]["head"]["lr_clip"] == 2e-4  # the towers' rate while the head trains
    assert json.loads((out / "towers" / "summary.json").read_text())["steps"] == 2
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["head"] == "glccl" and config["extra"]["recipe"] == {
        k: v for k, v in summary["recipe"].items() if k in ("towers", "head")
    }
    towers = load_file(out / "towers" / "best" / "model.safetensors")
    head = load_file(out / "last" / "model.safetensors")
    key = "video.visual.conv1.weight"
    assert (head[key] - towers[key]).abs().max() < 1e-2  # the head run started from the towers
    # with --towers-epochs 0 there is one stage, as with CLIP weights
    single = tmp_path / "single"
    assert main(train_args(small_corpus, single, "--max-steps", "1", "--towers-epochs", "0")) == 0
    assert not (single / "towers").exists() and "recipe" not in json.loads((single / "summary.json").read_text())


def test_the_towers_can_warm_up_on_another_corpus_than_the_head(small_corpus, tmp_path):
    """--towers-data: the warm-up trains and validates on that corpus (here the event clips that
    glccl synth writes, JSONL layout), the head on --data; the recipe records which."""
    clips = small_corpus / "events"
    out = tmp_path / "run"
    argv = train_args(small_corpus, out, "--head", "glccl", "--max-steps", "1", "--towers-epochs", "1")
    assert main([*argv, "--towers-data", str(clips)]) == 0
    towers = json.loads((out / "towers" / "summary.json").read_text())
    head = json.loads((out / "summary.json").read_text())
    val_clips = len(load_corpus(clips, "val").videos)
    val_videos = len(load_corpus(small_corpus, "val").videos)
    assert val_clips != val_videos  # so the two counts below tell the corpora apart
    assert towers["val_videos"] == val_clips and head["val_videos"] == val_videos
    assert head["recipe"]["towers"]["data"] == str(clips)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["extra"]["recipe"]["towers"]["data"] == str(clips)


def test_a_layout_without_val_trains_on_a_carved_split_written_next_to_the_run(tmp_path):
    from model.data.datasets import training_splits
    from model.data.synth_sprites import SpritesConfig, generate_sprites

    data = tmp_path / "sprites"
    generate_sprites(data, SpritesConfig(videos=30, seed=1, size=32, min_event_frames=2, max_event_frames=3), False)
    out = tmp_path / "run"
    assert main(train_args(data, out, "--max-steps", "1", "--towers-epochs", "0")) == 0
    carved = json.loads((out / "val_split.json").read_text())["carved_from_train"]
    assert sorted(carved) == sorted(v.video_id for v in training_splits(data).val.videos) and len(carved) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_carved_from_train"] and summary["val_videos"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--head", "nope"], "unknown head 'nope'"),
        (["--max-steps", "0"], "max_steps must be at least 1"),
        (["--batch-size", "1"], "batch_size must be at least 2"),
        (["--preset", "huge"], "unknown training preset 'huge'"),
        (["--towers-data", "/nonexistent/clips"], "--towers-data /nonexistent/clips does not exist"),
    ],
)
def test_bad_training_options_are_one_line_errors(small_corpus, tmp_path, capsys, extra, message):
    assert main(train_args(small_corpus, tmp_path / "run", *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_two_processes_under_torchrun_train_together(small_corpus, tmp_path):
    """The multi-GPU path (gathered features, averaged gradients) on CPU with the gloo backend."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "ops.commands.cli", *train_args(small_corpus, out)[:]]
    cmd += ["--max-steps", "2", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert (out / "best" / "model.safetensors").is_file()
