"""`glccl export-text`: the checkpoint's text tower as ONNX, for GLCCL_TEXT_BACKEND=onnxruntime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-text",
        help="export the checkpoint's text tower to ONNX (for the onnxruntime text backend)",
        description="Writes the text tower (tokens [B, L] -> word features [B, L, D] and sentence [B, D], "
        "dynamic batch and length) as ONNX, by default beside the checkpoint (CHECKPOINT/text.onnx), where "
        "the service looks for it. Checks that ONNX Runtime's features equal torch's.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--out", type=Path, default=None, help="where to write it (default: CHECKPOINT/text.onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import load_checkpoint
    from model.encoders import trim_tokens
    from model.onnx_text import export_text_onnx
    from service.text_backend import ONNX_FILE, OnnxTextEncoder

    model = load_checkpoint(args.checkpoint).eval()
    out = export_text_onnx(model.text, model.tokenizer(), args.out or args.checkpoint / ONNX_FILE)
    tokens = trim_tokens(model.tokenizer()(["a red circle moves left", "a blue square grows then a star"]))
    with torch.inference_mode():
        reference = model.encode_text(tokens)
    got = OnnxTextEncoder(out, threads=1)(tokens)
    diff = max(float((got.words - reference.words).abs().max()), float((got.sentence - reference.sentence).abs().max()))
    print(json.dumps({"onnx": str(out), "bytes": out.stat().st_size, "max_abs_difference": diff}))
    if diff > 1e-3:
        raise ValueError(f"the exported tower differs from torch's by {diff}")
    return 0
