"""`glccl bench text`: the text encoder's runtimes side by side (torch, ONNX Runtime, and with
--openvino OpenVINO), queries per second at each batch size, on this machine's CPU, with random
weights of the chosen backbone."""

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
        openvino = _openvino_models(path, args.threads) if args.openvino else {}
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
            for precision, compiled in openvino.items():
                request, feed = compiled.create_infer_request(), {0: tokens.numpy().astype("int64")}
                ov_ms = _median_ms(lambda r=request, f=feed: r.infer(f), args.repeats)
                words = torch.from_numpy(request.infer(feed)[compiled.outputs[0]].copy())
                rows[-1].update(
                    {
                        f"openvino_{precision}_ms": round(ov_ms, 2),
                        f"openvino_{precision}_vs_onnxruntime": round(onnx_ms / ov_ms, 2),
                        f"openvino_{precision}_max_abs_difference": float((words - reference.words).abs().max()),
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


def _openvino_models(path: Path, threads: int) -> dict[str, Any]:
    """The same ONNX graph compiled by OpenVINO in fp32 and at the CPU's default precision, by name
    (bf16 where the CPU has it, which is not fp32-exact; one entry where the default is f32)."""
    try:
        import openvino
    except ImportError as exc:
        raise ValueError("--openvino needs OpenVINO installed (pip install openvino)") from exc
    core = openvino.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()  # e.g. bf16
    models = {}
    for name, hint in (("f32", "f32"), (default, default)):
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint}
        models[name] = core.compile_model(str(path), "CPU", config)
    return models


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("text", help="the text encoder on torch and on ONNX Runtime, side by side")
    p.add_argument("--backbone", default="ViT-B-32")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1, help="threads of both runtimes (the service's per worker)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--openvino", action="store_true", help="also OpenVINO on the same graph, fp32 and the CPU's default precision"
    )
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    emit(run_bench(args), args.out)
    return 0
