"""`glccl bench text`: the text encoder's runtimes side by side (torch, ONNX Runtime), queries per
second at each batch size, on this machine's CPU, with random weights of the chosen backbone."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.report import emit


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from model.encoders import trim_tokens
    from model.glccl import RetrievalModel, make_config
    from model.onnx_text import export_text_onnx
    from ops.load.loadtest import DEFAULT_QUERIES
    from service.text_backend import OnnxTextEncoder

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = RetrievalModel(make_config("glccl", backbone=args.backbone)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = export_text_onnx(model.text, model.tokenizer(), Path(tmp) / "text.onnx")
        export_s = time.perf_counter() - started
        onnx = OnnxTextEncoder(path, args.threads)
        rows = []
        queries = list(DEFAULT_QUERIES)
        for batch in args.batches:
            texts = (queries * (batch // len(queries) + 1))[:batch]
            tokens = trim_tokens(model.tokenizer()(texts))
            with torch.inference_mode():
                reference = model.encode_text(tokens)

                def torch_run(t: torch.Tensor = tokens) -> object:
                    return model.encode_text(t)

                torch_ms = _median_ms(torch_run, args.repeats)
            onnx_ms = _median_ms(lambda t=tokens: onnx(t), args.repeats)
            got = onnx(tokens)
            rows.append(
                {
                    "batch": batch,
                    "tokens": int(tokens.shape[1]),
                    "torch_ms": round(torch_ms, 2),
                    "onnxruntime_ms": round(onnx_ms, 2),
                    "torch_queries_per_s": round(1000 * batch / torch_ms, 1),
                    "onnxruntime_queries_per_s": round(1000 * batch / onnx_ms, 1),
                    "onnxruntime_speedup": round(torch_ms / onnx_ms, 2),
                    "max_abs_difference": float((got.words - reference.words).abs().max()),
                }
            )
    return {
        "backbone": args.backbone,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "export_s": round(export_s, 1),
        "batches": rows,
    }


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("text", help="the text encoder on torch and on ONNX Runtime, side by side")
    p.add_argument("--backbone", default="ViT-B-32")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1, help="threads of both runtimes (the service's per worker)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    emit(run_bench(args), args.out)
    return 0
