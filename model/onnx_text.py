"""The text tower as an ONNX graph (dynamic batch and length), for runtimes faster than torch on a CPU.

The graph maps tokens [B, L] (int64, L up to the context length) to the per-token features
[B, L, D] and the sentence feature [B, D], exactly what TextEncoder computes; the word mask is not
in the graph (model.encoders.word_mask gives it from the tokens).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from model.encoders import TextEncoder, trim_tokens

log = logging.getLogger(__name__)

OPSET = 18


class _Outputs(nn.Module):
    def __init__(self, text: TextEncoder) -> None:
        super().__init__()
        self.text = text

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        features = self.text(tokens)
        return features.words, features.sentence


def export_text_onnx(text: TextEncoder, tokenizer: object, path: Path, context_length: int = 77) -> Path:
    """Writes `text` (fp32, CPU) to `path` as ONNX with dynamic batch and length (atomically)."""
    from model.io import atomic_write

    module = _Outputs(text).to("cpu", torch.float32).eval()
    example = trim_tokens(tokenizer(["a red circle moves left", "a blue square grows then a green star shrinks"]))
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=context_length)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamic_shapes={"tokens": {0: batch, 1: length}},
            input_names=["tokens"],
            output_names=["words", "sentence"],
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: program.save(str(tmp)))
    log.info("exported the text tower to %s", path)
    return path
