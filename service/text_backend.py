"""Text encoders the engine can use on a CPU: torch (the model itself) or ONNX Runtime (the same
text tower exported with model/onnx_text.py), chosen by GLCCL_TEXT_BACKEND.

ONNX Runtime runs the tower with graph optimisations on and the engine's thread count; its features
equal torch's within float rounding for every batch and length (tests/service/test_text_backend.py).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.encoders import word_mask
from model.features import TextFeatures
from model.glccl import RetrievalModel

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
ONNX_FILE = "text.onnx"  # beside the checkpoint, where `glccl export-text` writes it by default


class OnnxTextEncoder:
    """tokens [B, L] -> TextFeatures, through an ONNX Runtime session on the CPU."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, tokens: Tensor) -> TextFeatures:
        words, sentence = self.session.run(None, {"tokens": tokens.cpu().numpy().astype(np.int64)})
        return TextFeatures(torch.from_numpy(sentence), torch.from_numpy(words), word_mask(tokens.cpu()))


def onnx_encoder(
    model: RetrievalModel, checkpoint: Path, threads: int, onnx_path: Path | None = None
) -> OnnxTextEncoder:
    """The ONNX Runtime encoder of `model`: from `onnx_path`, or CHECKPOINT/text.onnx when it exists,
    else exported now into a temporary file (tens of seconds for a ViT-B/32 text tower)."""
    from model.onnx_text import export_text_onnx

    path = onnx_path or Path(checkpoint) / ONNX_FILE
    if not path.exists():
        if onnx_path is not None:
            raise FileNotFoundError(f"no ONNX text encoder at {onnx_path} (make one with `glccl export-text`)")
        path = Path(tempfile.mkdtemp(prefix="glccl-text-")) / ONNX_FILE
        log.info("no %s beside the checkpoint: exporting the text tower now", ONNX_FILE)
        export_text_onnx(model.text, model.tokenizer(), path)
    return OnnxTextEncoder(path, threads)
