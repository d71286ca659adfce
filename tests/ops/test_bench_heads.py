import json

from ops.commands.cli import main


def test_bench_heads_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "heads.json"
    argv = ["bench", "heads", "--texts", "6", "--videos", "9", "--dim", "16", "--frames", "4", "--words", "5"]
    assert main([*argv, "--heads", "meanP", "glccl", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [r["head"] for r in printed["results"]] == ["meanP", "glccl"]
    for r in printed["results"]:
        assert r["finite"] and r["pairs_per_s"] > 0 and r["peak_rss_mib"] > 0
    assert printed["results"][0]["cost_vs_meanP"] == 1.0


def test_bench_heads_rejects_bad_arguments(capsys):
    assert main(["bench", "heads", "--texts", "0"]) == 2
    assert "--texts must be at least 1" in capsys.readouterr().err
    assert main(["bench", "heads", "--heads", "nope"]) == 1
    assert "unknown head 'nope'" in capsys.readouterr().err
