"""The ONNX Runtime text encoder: the same features as torch for every batch and length, the same
ranking, through the CLI export and through the service."""

import json

import httpx
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.encoders import trim_tokens
from ops.commands.cli import main
from service.text_backend import ONNX_FILE, OnnxTextEncoder
from tests.service.serving import CAPTIONS


@pytest.fixture(scope="module")
def exported(service_files):
    """The test checkpoint's text tower exported once through `glccl export-text`."""
    ckpt = service_files["checkpoint"]
    out = ckpt.parent / "exported" / ONNX_FILE
    assert main(["export-text", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out


def test_export_text_writes_beside_the_checkpoint_and_checks_itself(service_files, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(service_files["checkpoint"], ckpt)
    assert main(["export-text", "--checkpoint", str(ckpt)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx"] == str(ckpt / ONNX_FILE) and printed["bytes"] == (ckpt / ONNX_FILE).stat().st_size
    assert printed["max_abs_difference"] < 1e-4


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_onnx_features_equal_torch_for_every_length(exported, service_files, batch):
    model = load_checkpoint(service_files["checkpoint"]).eval()
    encoder = OnnxTextEncoder(exported, threads=1)
    words = "a red circle moves left then a blue square grows and a green star shrinks fast".split()
    texts = [" ".join(words[: 1 + (i * 3) % len(words)]) for i in range(batch)]  # lengths differ within a batch
    for cut in (None, 3):  # trimmed to the longest, and a batch cut shorter than its longest text
        tokens = trim_tokens(model.tokenizer()(texts))
        if cut:
            tokens = tokens[:, :cut]
        with torch.inference_mode():
            reference = model.encode_text(tokens)
        got = encoder(tokens)
        torch.testing.assert_close(got.words, reference.words, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.sentence, reference.sentence, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.word_mask, reference.word_mask)
    full = model.full_tokenizer()(texts)  # the whole 77-token context
    with torch.inference_mode():
        torch.testing.assert_close(encoder(full).sentence, model.encode_text(full).sentence, rtol=1e-4, atol=1e-4)


def test_the_service_ranks_the_same_with_either_backend(serve, exported):
    torch_server = serve()
    onnx_server = serve(text_backend="onnxruntime", text_onnx=exported)
    for query in CAPTIONS[:6]:
        a = httpx.post(f"{torch_server.url}/search", json={"query": query, "top_k": 5}).json()["results"]
        b = httpx.post(f"{onnx_server.url}/search", json={"query": query, "top_k": 5}).json()["results"]
        assert [x["video_id"] for x in a] == [x["video_id"] for x in b]
        for x, y in zip(a, b, strict=True):
            assert abs(x["score"] - y["score"]) <= 1e-3 * max(1.0, abs(x["score"]))


def test_a_missing_onnx_file_is_a_clear_error(service_files, tmp_path):
    from service.settings import Settings
    from service.state import ServiceState

    settings = Settings(
        checkpoint=service_files["checkpoint"],
        index=service_files["index"],
        text_backend="onnxruntime",
        text_onnx=tmp_path / "none.onnx",
    )
    with pytest.raises(FileNotFoundError, match="glccl export-text"):
        ServiceState.load(settings)


def test_auto_takes_onnx_when_the_export_is_beside_the_checkpoint(service_files, tmp_path):
    import shutil

    from service.settings import Settings
    from service.state import ServiceState

    ckpt = tmp_path / "ckpt"
    shutil.copytree(service_files["checkpoint"], ckpt)
    plain = ServiceState.load(Settings(checkpoint=ckpt, index=service_files["index"]))
    try:
        assert not isinstance(plain.engine.text_encoder, OnnxTextEncoder)  # nothing exported: torch
    finally:
        plain.close()
    assert main(["export-text", "--checkpoint", str(ckpt)]) == 0
    auto = ServiceState.load(Settings(checkpoint=ckpt, index=service_files["index"]))
    try:
        assert (
            isinstance(auto.engine.text_encoder, OnnxTextEncoder) and auto.engine.text_encoder.path == ckpt / ONNX_FILE
        )
    finally:
        auto.close()
