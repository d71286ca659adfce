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
