import json

import numpy as np
import pytest
import torch

from model.glccl import RetrievalModel, make_config
from ops.bench.exactness import compare
from ops.bench.spliced import SplicedStore
from ops.commands.cli import main
from service.stores.base import FrameBatch, StoreManifest


def _batch(n: int, f: int, d: int, seed: int) -> FrameBatch:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, f), bool)
    mask[0, f - 2 :] = False  # a short video: its last slots are padding
    times = np.cumsum(rng.uniform(0.1, 1.0, (n, f)), axis=1).astype(np.float32)
    return FrameBatch(rng.standard_normal((n, f, d)).astype(np.float16), mask, times)


def test_spliced_distractors_are_thirds_of_train_videos_and_deterministic():
    manifest = StoreManifest(dim=4, frames=6, model_hash="x")
    test, train = _batch(3, 6, 4, 0), _batch(5, 6, 4, 1)
    store = SplicedStore(manifest, ["t0", "t1", "t2"], test, train, distractors=2500, seed=7, chunk=1000)
    assert len(store) == 2503 and store.ids()[:4] == ["t0", "t1", "t2", "distractor0000000"]
    assert "distractor0002499" in store and "distractor0002500" not in store and "t1" in store and "x" not in store
    whole = store.get(store.ids())
    np.testing.assert_array_equal(whole.frames[:3], test.frames)
    picked = store.get(["distractor0002400", "t2", "distractor0000003"])  # random access, any order
    np.testing.assert_array_equal(picked.frames, whole.frames[[2403, 2, 6]])
    np.testing.assert_array_equal(picked.times, whole.times[[2403, 2, 6]])
    again = SplicedStore(manifest, ["t0", "t1", "t2"], test, train, distractors=2500, seed=7, chunk=1000)
    np.testing.assert_array_equal(again.get(["distractor0001234"]).frames, whole.frames[[1237]])
    other = SplicedStore(manifest, ["t0", "t1", "t2"], test, train, distractors=2500, seed=8, chunk=1000)
    assert not np.array_equal(other.get(store.ids()[3:]).frames, whole.frames[3:])
    # each third of a distractor is the same slots of one train video: frames, mask and times together
    sources = []
    for i in range(3, 200):
        for lo, hi in ((0, 2), (2, 4), (4, 6)):
            match = [j for j in range(5) if np.array_equal(whole.frames[i, lo:hi], train.frames[j, lo:hi])]
            assert len(match) == 1
            j = match[0]
            np.testing.assert_array_equal(whole.mask[i, lo:hi], train.mask[j, lo:hi])
            np.testing.assert_array_equal(whole.times[i, lo:hi], train.times[j, lo:hi])
            sources.append(j)
    assert set(sources) == set(range(5))  # every train video is used


def test_compare_counts_ties_at_the_kth_place_as_exact():
    truth = [["a", "b"], ["a", "b"], ["a", "b"]]
    truth_scores = np.array([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    served = [["b", "a"], ["a", "c"], ["a", "d"]]  # same set; c ties b; d scores below the 2nd best
    scores = [[1.0, 2.0], [2.0, 1.0], [2.0, 0.5]]
    out = compare(served, scores, truth, truth_scores, targets=["a", "c", "zzz"])
    assert out["exact_share"] == round(2 / 3, 4)
    assert out["mean_recall_at_10"] == round((1 + 0.5 + 0.5) / 3, 4)
    assert out["served"]["R@1"] == round(100 * 0 / 3, 2) and out["served"]["R@5"] == round(100 * 2 / 3, 2)
    assert out["exhaustive"]["R@1"] == round(100 / 3, 2) and out["exhaustive"]["R@5"] == round(100 / 3, 2)
    assert out["r_at_k_gap"]["R@5"] == round(out["served"]["R@5"] - out["exhaustive"]["R@5"], 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("exactness") / "ckpt")


def test_bench_exactness_through_the_cli(tmp_path, capsys, small_corpus, checkpoint):
    out = tmp_path / "exactness.json"
    argv = ["bench", "exactness", "--checkpoint", str(checkpoint), "--data", str(small_corpus), "--no-progress"]
    # a pool and candidates that cover the whole corpus: served must equal exhaustive
    argv += ["--distractors", "0", "300", "--pool", "400", "--candidates", "400", "--threads", "1"]
    argv += ["--exhaustive", "never"]
    assert main([*argv, "--queries", "12", "--out", str(out), "--work", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [s["distractors"] for s in printed["sizes"]] == [0, 300]
    test_videos = printed["test_videos"]
    assert [s["videos"] for s in printed["sizes"]] == [test_videos, test_videos + 300]
    for size in printed["sizes"]:
        (run,) = size["by_pool"]
        assert run["exact_share"] == 1.0 and run["mean_recall_at_10"] == 1.0 and run["path"] == "two_stage"
        assert run["served"] == run["exhaustive"] and set(run["r_at_k_gap"].values()) == {0.0}
        assert {"encode", "candidates", "rerank"} <= set(run["lone_query_ms"])
        assert all(t["met"] and t["missed_by"] == 0 for t in run["targets"].values())
        selective, broad = size["filtered"]  # filtered searches against the matching videos' exhaustive top-10
        assert (selective["filter"], broad["filter"]) == ("selective_1pct", "broad_50pct")
        assert abs(selective["videos"] - size["videos"] / 100) <= 1 and abs(broad["videos"] - size["videos"] / 2) <= 1
        for f in (selective, broad):
            (filtered_run,) = f["by_pool"]
            assert filtered_run["every_result_matches"] and filtered_run["exact_share"] == 1.0
    assert printed["queries"] == min(12, printed["queries"]) > 0
    assert not list(tmp_path.glob("tmp*")), "the temporary index is removed"


def test_bench_exactness_misses_when_the_pool_is_narrow(tmp_path, capsys, small_corpus, checkpoint):
    argv = ["bench", "exactness", "--checkpoint", str(checkpoint), "--data", str(small_corpus), "--no-progress"]
    argv += ["--distractors", "2000", "--pool", "10", "5000", "--candidates", "10", "--queries", "12", "--threads", "1"]
    assert main([*argv, "--work", str(tmp_path)]) == 0
    size = json.loads(capsys.readouterr().out)["sizes"][0]
    narrow, whole = size["by_pool"]
    assert narrow["path"] == "two_stage" and whole["path"] == "exhaustive"  # auto: the pool covers the corpus
    assert narrow["exact_share"] < 1.0 and narrow["mean_recall_at_10"] < 1.0  # random weights, 2,000 spliced videos
    assert not narrow["targets"]["exact_share_at_least_0.99"]["met"]
    assert narrow["targets"]["exact_share_at_least_0.99"]["missed_by"] == round(0.99 - narrow["exact_share"], 4)
    assert whole["exact_share"] == 1.0 and whole["served"] == whole["exhaustive"]  # exact by construction
    selective_narrow, selective_whole = size["filtered"][0]["by_pool"]  # ~20 matches > pool 10: FAISS with a selector
    assert selective_narrow["every_result_matches"] and selective_whole["exact_share"] == 1.0


def test_bench_exactness_rejects_bad_arguments(capsys, checkpoint, small_corpus):
    argv = ["bench", "exactness", "--checkpoint", str(checkpoint), "--data", str(small_corpus)]
    assert main([*argv, "--queries", "0"]) == 2
    assert "--queries must be at least 1" in capsys.readouterr().err
    assert main([*argv, "--distractors", "-1"]) == 2
    assert "--distractors must be 0 or more" in capsys.readouterr().err


def test_first_stage_depths_rank_the_exact_terms_and_the_proxies():
    from model.features import TextFeatures, VideoFeatures
    from ops.bench.first_stage import depths

    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()
    g = torch.Generator().manual_seed(1)
    video = VideoFeatures(torch.randn(300, 4, 32, generator=g), torch.ones(300, 4, dtype=torch.bool))
    with torch.inference_mode():
        text = model.encode_text(model.tokenizer()(["a red circle moves left", "a blue star", "two things then more"]))
    text = TextFeatures(text.sentence, text.words, text.word_mask)
    out = depths(model.head, text, video, k=10)
    assert out["videos"] == 300 and out["queries"] == 3
    table = out["proxies"]
    assert {"S_vs (exact, every frame)", "sentence . best normalised frame (the index today)"} <= set(table)
    for row in table.values():
        assert 10 <= row["median_depth"] <= row["p90_depth"] <= 300
        assert row["within_1%"] <= row["within_4%"] <= row["within_10%"] <= 1.0


def test_bench_exactness_with_the_projected_first_stage(tmp_path, capsys, small_corpus, checkpoint):
    argv = ["bench", "exactness", "--checkpoint", str(checkpoint), "--data", str(small_corpus), "--no-progress"]
    argv += ["--distractors", "2000", "--pool", "50", "--candidates", "50", "--queries", "12", "--threads", "1"]
    argv += ["--no-filters", "--exhaustive", "never", "--work", str(tmp_path)]
    found = {}
    for kind in ("index", "projected"):
        assert main([*argv, "--first-stage-kind", kind]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["first_stage"] == kind and out["first_stage_dims"] == (32 if kind == "projected" else None)
        found[kind] = out["sizes"][0]["by_pool"][0]
    # the coarse score over every video (32 directions: all of this model's) ranks like S, the index does not
    assert found["projected"]["exact_share"] > found["index"]["exact_share"]
    assert found["projected"]["mean_recall_at_10"] > found["index"]["mean_recall_at_10"]
