import json

import numpy as np
import pytest
import torch

from model.glccl import RetrievalModel, make_config
from ops.bench.service_corpus import event_captions, exactness, query_texts
from ops.commands.cli import main
from ops.support.synthetic import SyntheticStore
from service.catalog import Catalog, StoreSpec, build_catalog
from service.engine import SearchEngine
from service.index import IndexParams
from service.stores.base import StoreManifest


def test_bench_service_quick_through_the_cli(tmp_path, capsys):
    out = tmp_path / "service.json"
    argv = ["bench", "service", "--quick", "--no-progress", "--candidates", "400", "--kind", "flat"]
    assert main([*argv, "--max-batch", "8", "--threads", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    for name in ("service", "naive"):
        run = printed[name]
        steps = run["steps"]
        assert steps and all({"offered_rate", "p50_ms", "p95_ms", "p99_ms", "errors", "held"} <= set(s) for s in steps)
        assert [s["offered_rate"] for s in steps] == sorted(s["offered_rate"] for s in steps)
        held = [s["offered_rate"] for s in steps if s["held"]]
        assert run["highest_rate_held"] == max(held, default=0.0)
        for s in steps:  # held means no errors and p99 under the target
            assert s["held"] == (s["errors"] == 0 and s["p99_ms"] is not None and s["p99_ms"] <= run["target_p99_ms"])
    for name in ("service", "service_serial", "naive"):  # where a lone query's time goes, as the server saw it
        lone = printed[name]["lone_query"]
        assert lone["queries"] == 30 and {"encode", "candidates", "narrow", "rerank"} <= set(lone["median_ms"])
        assert lone["median_ms"]["round_trip"] >= lone["median_ms"]["encode"] > 0
    assert printed["scale"]["lone_query"]["median_ms"]["round_trip"] > 0
    configs = printed["encoder_configurations"]  # torch, ONNX Runtime, ONNX Runtime + cache on a Zipf mix
    for name in ("torch", "onnxruntime", "onnxruntime_uncut", "onnxruntime_cache_zipf", "onnxruntime_projected"):
        assert configs[name]["lone_query"]["median_ms"]["encode"] > 0 and configs[name]["capacity"]["ok_per_s"] > 0
    assert configs["onnxruntime_cache_zipf"]["settings"]["encode_cache"] == "4096"
    assert float(configs["onnxruntime_uncut"]["settings"]["max_batch_ms"]) >= 1e9  # batches never cut
    projected = configs["onnxruntime_projected"]  # the exact path: the two stages ran, the pool from the coarse pass
    assert projected["settings"]["first_stage"] == "projected" and projected["settings"]["candidates"] == "1000"
    stages = projected["lone_query"]["median_ms"]
    assert stages["candidates"] > 0 and "exhaustive" not in stages
    assert configs["ratios"]["onnxruntime_lone_speedup"] == round(
        configs["torch"]["lone_query"]["median_ms"]["round_trip"]
        / configs["onnxruntime"]["lone_query"]["median_ms"]["round_trip"],
        2,
    )
    assert printed["service"]["settings"]["encode_cache"] == 0  # the ladders encode every query
    assert printed["naive"]["settings"] == {**printed["naive"]["settings"], "max_batch": 1, "context": "full"}
    assert printed["threads"] == 1 and printed["service"]["settings"]["threads"] == 1
    assert printed["service"]["settings"]["pipeline"] and not printed["naive"]["settings"]["pipeline"]
    assert printed["service_serial"]["settings"]["pipeline"] is False
    # the naive server runs torch's default: every core
    assert printed["naive"]["settings"]["threads"] == printed["cores"]
    rows = printed["optimisations"]
    assert rows[0]["speedup_vs_naive"] == 1.0 and len(rows) == 7 and all(r["queries_per_s"] > 0 for r in rows)
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["speedup_vs_previous"] == round(after["queries_per_s"] / before["queries_per_s"], 2)
    ratios = printed["ratios"]
    limit = printed["limit"]["queries_per_s"]
    assert (
        limit
        == max(printed["limit"]["per_batch"].values())
        == max(printed["limit"]["queries_per_s_by_threads"].values())
    )
    assert ratios["service_over_limit"] == round(printed["service"]["highest_rate_held"] / limit, 3)
    if printed["naive"]["highest_rate_held"]:
        expected = printed["service"]["highest_rate_held"] / printed["naive"]["highest_rate_held"]
        assert ratios["service_over_naive"] == round(expected, 2)
    # 400 flat candidates cover the whole first corpus (300 videos): two stages must equal exhaustive
    assert printed["exactness"]["exact_share"] == 1.0
    scale = printed["scale"]
    assert scale["videos"] == 600 and scale["store_bytes_per_video"] >= 12 * printed["shapes"]["dim"] * 2
    assert set(printed["targets"]) == {
        "service_over_naive_at_least_5",
        "service_over_limit_at_least_0.7",
        "exact_share_at_least_0.99",
        "scale_p99_ratio_at_most_2",
    }


def test_bench_service_rejects_bad_arguments(capsys):
    assert main(["bench", "service", "--videos", "0"]) == 2
    assert "--videos must be at least 1" in capsys.readouterr().err
    assert main(["bench", "service", "--videos", "10", "--scale-videos", "5"]) == 2
    assert "--scale-videos" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()


def test_synthetic_store_is_deterministic_and_random_access():
    manifest = StoreManifest(dim=8, frames=4, model_hash="x")
    events = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    store = SyntheticStore(manifest, 2500, events, chunk=1000)
    whole = np.concatenate([b.frames for _, b in store.iter_batches(700)])
    picked = store.get(["video0002400", "video0000003", "video0001500"]).frames
    np.testing.assert_array_equal(picked, whole[[2400, 3, 1500]])
    assert "video0002499" in store and "video0002500" not in store and len(store.ids()) == 2500


def test_two_stage_equals_exhaustive_when_candidates_cover_the_corpus(tmp_path, tiny_model):
    from model.checkpoint import save_checkpoint
    from ops.bench.service_corpus import encode_texts

    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt")
    events = encode_texts(tiny_model, event_captions()).sentence.numpy()
    source = SyntheticStore(StoreManifest.for_checkpoint(ckpt), 150, events)
    build_catalog(source, tmp_path / "index", IndexParams(kind="ivf", nlist=4, nprobe=1), StoreSpec())
    with Catalog.open(tmp_path / "index") as catalog:
        full = exactness(SearchEngine(tiny_model, catalog, candidates=150), query_texts(6), progress=False)
        assert full["exact_share"] == 1.0 and full["exact_order_share"] == 1.0
        few = exactness(SearchEngine(tiny_model, catalog, candidates=10), query_texts(6), progress=False)
        assert few["exact_share"] <= 1.0 and few["candidates"] == 10


def test_naive_context_gives_the_trimmed_features(tmp_path, tiny_model):
    texts = ["a red circle moves left", "a blue square grows then a green star shrinks"]
    full_tokens = tiny_model.full_tokenizer()(texts)
    assert full_tokens.shape[1] == 77
    with torch.inference_mode():
        full = tiny_model.encode_text(full_tokens)
        trimmed = tiny_model.encode_text(tiny_model.tokenizer()(texts)[:, :12])
    torch.testing.assert_close(full.sentence, trimmed.sentence, rtol=1e-4, atol=1e-4)


def test_rate_ladder_doubles_then_bisects_to_the_knee(monkeypatch):
    import ops.bench.service_load as load

    offered = []

    def fake_step(url, rate, duration_s, queries, target_ms):
        offered.append(rate)
        return {
            "offered_rate": round(rate, 2),
            "p99_ms": 50.0 if rate <= 30 else 500.0,
            "errors": 0,
            "held": rate <= 30,
        }

    monkeypatch.setattr(load, "one_step", fake_step)
    out = load.step_rates("http://x", 5.0, 1.0, ["q"], 100.0, "test", bisections=2, min_requests=1)
    reported = [s["offered_rate"] for s in out["steps"]]
    assert offered[1:5] == [5.0, 10.0, 20.0, 40.0]  # after the warm-up: doubling until one is not held
    assert len(reported) == 6 and reported == sorted(reported)  # then two bisections between 20 and 40
    assert 20.0 < out["highest_rate_held"] <= 30.0
    # a first rate that is not held walks down instead
    offered.clear()
    down = load.step_rates("http://x", 100.0, 1.0, ["q"], 100.0, "test", bisections=0)
    assert offered[1:4] == [100.0, 50.0, 25.0] and down["highest_rate_held"] == 25.0
    # but not below min_requests per step (10 per 1-second step here): nothing held is reported as 0
    offered.clear()
    never = load.step_rates("http://x", 35.0, 1.0, ["q"], 100.0, "test", min_requests=20)
    assert offered[1:] == [35.0] and never["highest_rate_held"] == 0.0


def test_bench_service_rejects_bad_pools(capsys):
    assert main(["bench", "service", "--pools", "500,lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pools" in err


def test_trained_exactness_builds_its_corpus_in_the_checkpoints_text_space(tmp_path, tiny_model):
    from model.checkpoint import save_checkpoint
    from ops.bench.service_corpus import trained_exactness

    ckpt = save_checkpoint(tiny_model, tmp_path / "trained")
    params = IndexParams(kind="ivf", nlist=4, nprobe=1)
    out = trained_exactness(ckpt, tmp_path, 150, params, 150, 150, 6, (20, 150), progress=False)
    assert out["checkpoint"] == str(ckpt) and out["videos"] == 150 and out["queries"] == 6
    assert out["exact_share"] == 1.0  # candidates cover the corpus: two stages equal exhaustive
    assert out["by_pool"] is None  # a pool at or below the candidates is the candidates: one row, not two
    assert out["exact_share_by_events"] == {"one": 1.0, "two": 1.0}  # query_texts alternates the two kinds
    assert (tmp_path / "index-trained").is_dir()


def test_exactness_is_split_by_the_number_of_events_a_query_names():
    from ops.bench.service_corpus import _by_events

    texts = ["a red circle grows", "a red circle grows then a blue star shrinks", "a pink ring moves up", "x then y"]
    assert _by_events(texts, [True, False, False, True]) == {"one": 0.5, "two": 0.5}
    assert _by_events(texts[:1], [False]) == {"one": 0.0}  # a kind with no query is left out


def test_bench_service_rejects_a_missing_trained_checkpoint(tmp_path, capsys):
    assert main(["bench", "service", "--trained-checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trained-checkpoint" in err and "config.json" in err


def test_targets_say_what_limits_each_missed_one():
    from ops.bench.service_targets import targets

    lone = {"median_ms": {"round_trip": 80.0, "encode": 40.0, "candidates": 7.0}}
    result = {
        "ratios": {"service_over_naive": None, "service_over_limit": 0.1},
        "service": {"target_p99_ms": 100.0, "lone_query": lone, "capacity": {"ok_per_s": 25.0}},
        "naive": {"highest_rate_held": 0.0, "lone_query": lone, "capacity": {"ok_per_s": 6.0}},
        "limit": {"queries_per_s": 100.0, "best_batch": 32},
        "exactness": {"exact_share": 0.995, "pool": 1000, "mean_recall_at_k": 0.999, "by_pool": None},
        "scale": {"p99_ratio_vs_first_size": 2.5, "videos": 1000, "lone_query": lone},
        "shapes": {"videos": 100},
        "cores": 2,
    }
    out = targets(result)
    assert out["exact_share_at_least_0.99"] == {"value": 0.995, "met": True, "short_by": 0.0}  # met: nothing to explain
    assert out["service_over_limit_at_least_0.7"]["short_by"] == 0.6
    assert "80.0 ms of the 100.0 ms budget" in out["service_over_limit_at_least_0.7"]["limited_by"]
    # FAISS 7 ms is all of this lone query's scoring: 2 cores doing only that answer 285.7/s, 2.86 of the limit
    assert (
        "take 7.0 ms on one core, so 2 cores doing only that would answer 285.7/s at most (2.86 of the limit)"
        in (out["service_over_limit_at_least_0.7"]["limited_by"])
    )
    naive, scale = out["service_over_naive_at_least_5"], out["scale_p99_ratio_at_most_2"]
    assert naive["met"] is False and "holds 0.0/s" in naive["limited_by"]
    assert scale["met"] is False and "1000 videos" in scale["limited_by"]
