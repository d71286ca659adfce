from __future__ import annotations

import logging

from ops.commands.demo import prepare
from service.catalog import Catalog


def test_demo_builds_every_step_once_and_keeps_it(tmp_path, caplog):
    root = tmp_path / "demo"
    paths = prepare(root, videos=24, epochs=1)
    for key in ("checkpoint", "features", "index"):
        assert paths[key].exists(), key
    with Catalog.open(paths["index"]) as catalog:
        assert len(catalog) == 24  # every video of every split is searchable
    stamp = (paths["checkpoint"] / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="glccl.demo"):
        prepare(root, videos=24, epochs=1)
    assert (paths["checkpoint"] / "model.safetensors").stat().st_mtime_ns == stamp
    kept = [r.getMessage() for r in caplog.records if "already made" in r.getMessage()]
    assert len(kept) == 4  # corpus, model, text encoder, index reused; features re-checked (nothing to extract)
    assert (paths["checkpoint"] / "text.onnx").exists()  # the service will encode queries with ONNX Runtime
