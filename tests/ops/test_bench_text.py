import json

import pytest

from ops.commands.cli import main


def test_bench_text_compares_both_runtimes(capsys):
    argv = ["bench", "text", "--backbone", "glccl-test", "--batches", "1", "4", "--repeats", "2"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in printed["batches"]] == [1, 4] and printed["threads"] == 1
    for row in printed["batches"]:
        assert row["max_abs_difference"] < 1e-4
        assert row["onnxruntime_speedup"] == pytest.approx(row["torch_ms"] / row["onnxruntime_ms"], rel=0.1)  # rounding


def test_bench_text_adds_openvino_in_fp32_and_the_cpus_own_precision(capsys):
    argv = ["bench", "text", "--backbone", "glccl-test", "--batches", "2", "--repeats", "2", "--openvino"]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["batches"]
    assert row["openvino_f32_max_abs_difference"] < 1e-4  # fp32 on the same graph: torch's features
    assert row["openvino_f32_vs_onnxruntime"] == pytest.approx(row["onnxruntime_ms"] / row["openvino_f32_ms"], rel=0.1)
    others = [k for k in row if k.startswith("openvino_") and k.endswith("_ms") and k != "openvino_f32_ms"]
    assert len(others) <= 1  # the CPU's default precision, where it is not f32 (bf16 on this machine)
