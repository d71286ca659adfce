from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import service.extract as extract_module
from model.checkpoint import load_checkpoint, save_checkpoint
from model.data.video import decode_video
from model.glccl import RetrievalModel, make_config
from ops.commands.cli import main
from service.catalog import Catalog
from service.extract import find_videos
from service.stores.base import StoreManifest
from service.stores.local import LocalStore
from service.stores.redis_store import RedisStore
from tests.conftest import write_mp4


@pytest.fixture
def video_folder(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        write_mp4(folder / f"clip{i}.mp4", frames=6 + 2 * i, seed=i)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (folder / "notes.txt").write_text("not a video at all")
    return folder


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_extract_stores_the_models_frames_resumes_and_skips_a_corrupt_video(
    tmp_path, video_folder, tiny_checkpoint, capsys, monkeypatch
):
    out = tmp_path / "features"
    argv = ["extract", "--checkpoint", str(tiny_checkpoint), "--data", str(video_folder), "--out", str(out)]
    first = run_json(capsys, [*argv, "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert (first["extracted"], first["failed_count"], first["videos"]) == (3, 1, 3)
    manifest = json.loads((out / "extract.json").read_text())
    assert "broken" in manifest["failed"] and manifest["failed"]["broken"]
    assert (manifest["dim"], manifest["frames"], manifest["dtype"]) == (32, 4, "float16")
    assert manifest["model_hash"] == StoreManifest.for_checkpoint(tiny_checkpoint).model_hash

    # The stored V is the model's encode_video output (after the temporal transformer), in fp16.
    model = load_checkpoint(tiny_checkpoint).eval()
    clip = decode_video(video_folder / "clip1.mp4", 4, model.image_size)
    with torch.no_grad():
        want = model.encode_video(clip.frames[None], clip.mask[None]).frames[0].numpy()
    with LocalStore.open(out) as store:
        assert sorted(store.ids()) == ["clip0", "clip1", "clip2"]
        got = store.get(["clip1"])
        np.testing.assert_allclose(got.frames[0].astype(np.float32), want, rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(got.mask[0], clip.mask.numpy())
        np.testing.assert_allclose(got.times[0], clip.times.numpy())
        assert got.times[0][1] > got.times[0][0]

    # Second run: nothing is decoded again except the file that failed.
    decoded = []
    real = extract_module.decode_video
    monkeypatch.setattr(extract_module, "decode_video", lambda path, *a: decoded.append(path.name) or real(path, *a))
    second = run_json(capsys, [*argv, "--no-progress"])
    assert (second["skipped_existing"], second["extracted"], second["videos"]) == (3, 0, 3)
    assert decoded == ["broken.mp4"]


def test_extract_refuses_features_of_another_checkpoint(tmp_path, video_folder, tiny_checkpoint, capsys):
    out = tmp_path / "features"
    base = ["extract", "--data", str(video_folder), "--out", str(out), "--no-progress"]
    run_json(capsys, [*base, "--checkpoint", str(tiny_checkpoint)])
    torch.manual_seed(1)
    other = save_checkpoint(
        RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=8)), tmp_path / "other"
    )
    assert main([*base, "--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err
    assert "model_hash" in err and "new --out" in err and "Traceback" not in err


def test_extract_reports_bad_input_in_one_line(tmp_path, tiny_checkpoint, capsys):
    assert main(["extract", "--checkpoint", str(tmp_path / "nope"), "--data", ".", "--out", str(tmp_path / "o")]) == 1
    assert "not a checkpoint" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["extract", "--checkpoint", str(tiny_checkpoint), "--data", str(empty), "--out", str(tmp_path / "o")]) == 1
    )
    err = capsys.readouterr().err
    assert "neither a dataset layout nor video files" in err and len(err.strip().splitlines()) == 1
    assert (
        main(["extract", "--checkpoint", str(tiny_checkpoint), "--data", ".", "--out", "o", "--batch-size", "0"]) == 2
    )
    if not torch.cuda.is_available():
        argv = ["extract", "--checkpoint", str(tiny_checkpoint), "--data", str(empty), "--out", str(tmp_path / "o")]
        assert main([*argv, "--device", "cuda"]) == 1
        assert "CUDA is not available" in capsys.readouterr().err


def test_videos_come_from_a_folder_a_jsonl_manifest_or_a_dataset_layout(tmp_path):
    (tmp_path / "folder").mkdir()
    for name in ("b.mp4", "a.webm", "notes.txt"):
        (tmp_path / "folder" / name).write_bytes(b"")
    assert [(v.video_id, v.path.name) for v in find_videos(tmp_path / "folder")] == [("a", "a.webm"), ("b", "b.mp4")]

    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"video": "clips/x.mp4", "caption": "c"}\n{"video": "/abs/y.mp4", "video_id": "why"}\n')
    items = find_videos(manifest)
    assert [(v.video_id, str(v.path)) for v in items] == [("x", str(tmp_path / "clips/x.mp4")), ("why", "/abs/y.mp4")]

    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo1\nvideo2\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nk,v,video3,a cat\nk,v,video1,a dog\n"
    )
    sentences = [{"video_id": f"video{i}", "caption": "x", "sen_id": i} for i in (1, 2)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    # No val csv: "all" takes train and test, each video once.
    assert [v.video_id for v in find_videos(root)] == ["video1", "video2", "video3"]
    assert [v.video_id for v in find_videos(root, split="test")] == ["video3", "video1"]
    with pytest.raises(ValueError, match="unknown split"):
        find_videos(root, split="dev")


def test_index_build_local_and_redis_then_search(
    tmp_path, video_folder, tiny_checkpoint, capsys, redis_server, redis_prefix
):
    features = tmp_path / "features"
    run_json(
        capsys,
        [
            "extract",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(video_folder),
            "--out",
            str(features),
            "--no-progress",
        ],
    )
    expected = StoreManifest.for_checkpoint(tiny_checkpoint)
    with LocalStore.open(features) as store:
        all_frames = store.get(["clip0", "clip1", "clip2"])
    query = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    best = np.where(all_frames.mask, np.einsum("d,nfd->nf", query[0], all_frames.frames.astype(np.float32)), -np.inf)
    ranking = [["clip0", "clip1", "clip2"][i] for i in np.argsort(-best.max(1))]  # max over real frames

    local = run_json(
        capsys,
        [
            "index",
            "build",
            "--features",
            str(features),
            "--out",
            str(tmp_path / "idx"),
            "--shards",
            "2",
            "--no-progress",
        ],
    )
    assert (local["videos"], local["index"]["shards"], local["store"]["backend"]) == (3, 2, "local")
    with Catalog.open(tmp_path / "idx", expected=expected) as catalog:
        ids, scores = catalog.search_candidates(query, 3)[0]
        assert ids == ranking and scores[0] >= scores[1] >= scores[2]

    url = redis_server.url
    argv = ["index", "build", "--features", str(features), "--out", str(tmp_path / "ridx"), "--store", "redis"]
    remote = run_json(
        capsys, [*argv, "--redis-url", url, "--redis-prefix", redis_prefix, "--kind", "hnsw", "--no-progress"]
    )
    assert remote["store"] == {"backend": "redis", "url": url, "prefix": redis_prefix, "cluster": False}
    with RedisStore.connect(url, redis_prefix) as store:
        assert len(store) == 3 and store.manifest == expected
    with Catalog.open(tmp_path / "ridx", expected=expected) as catalog:
        assert catalog.search_candidates(query, 1)[0][0] == ranking[:1]

    assert main(["index", "info", "--index", str(tmp_path / "ridx")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["live"]["videos"] == 3 and info["index"]["kind"] == "hnsw"


def test_index_build_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["index", "build", "--features", str(tmp_path / "none"), "--out", str(tmp_path / "i")]) == 1
    err = capsys.readouterr().err
    assert "not a frame store" in err and "Traceback" not in err
    assert main(["index", "build", "--features", "f", "--out", "i", "--shards", "0"]) == 2
    assert "--shards must be at least 1" in capsys.readouterr().err
    assert main(["index", "build", "--features", "f", "--out", "i", "--store", "redis"]) == 2
    assert "--redis-url" in capsys.readouterr().err


def test_bench_stores_quick_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "stores.json"
    assert main(["bench", "stores", "--quick", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["extraction"]["videos_per_s"] > 0
    sizes = [s["videos"] for s in printed["search"]]
    assert sizes == sorted(sizes) and len(sizes) >= 2
    for row in printed["search"]:
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["build_s"] > 0
    assert printed["stores"]["local"]["bytes_per_video"] >= 2 * 512 * 12
    assert printed["stores"]["redis"]["bytes_per_video"] >= 2 * 512 * 12


def test_metadata_from_a_manifest_or_sidecar_files_reaches_the_catalog(
    tmp_path, video_folder, tiny_checkpoint, capsys, redis_server, redis_prefix
):
    (video_folder / "clip1.json").write_text('{"title": "Clip one", "tags": ["b"]}')  # a sidecar
    (video_folder / "clip2.json").write_text("[1, 2]")  # not an object: that video is refused
    manifest = tmp_path / "list.jsonl"
    lines = [
        {"video": str(video_folder / "clip0.mp4"), "metadata": {"title": "Clip zero", "year": 2020}},
        {"video": str(video_folder / "clip1.mp4")},  # no metadata in the manifest: its sidecar
        {"video": str(video_folder / "clip2.mp4")},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    features = tmp_path / "features"
    argv = ["extract", "--checkpoint", str(tiny_checkpoint), "--data", str(manifest), "--out", str(features)]
    summary = run_json(capsys, [*argv, "--no-progress"])
    failed = json.loads((features / "extract.json").read_text())["failed"]
    assert summary["extracted"] == 2 and "metadata in clip2.json" in failed["clip2"]
    want = {"clip0": {"title": "Clip zero", "year": 2020}, "clip1": {"title": "Clip one", "tags": ["b"]}}
    with LocalStore.open(features) as store:
        assert store.all_metadata() == want

    (video_folder / "clip1.json").write_text('{"title": "Clip 1"}')  # a rerun updates what changed
    assert run_json(capsys, [*argv, "--no-progress"])["extracted"] == 0
    want["clip1"] = {"title": "Clip 1"}
    with LocalStore.open(features) as store:
        assert store.all_metadata() == want

    build = ["index", "build", "--features", str(features), "--no-progress"]
    run_json(capsys, [*build, "--out", str(tmp_path / "idx")])
    url = redis_server.url
    run_json(capsys, [*build, "--out", str(tmp_path / "ridx"), "--store", "redis", "--redis-url", url,
                      "--redis-prefix", redis_prefix])  # fmt: skip
    for index in ("idx", "ridx"):
        with Catalog.open(tmp_path / index) as catalog:
            assert catalog.get_metadata(["clip0", "clip1"]) == [want["clip0"], want["clip1"]]
