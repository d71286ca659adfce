"""One prepared GPU check (never required): the text encoder in fp16 and batched scoring on CUDA.

    python -m ops.bench.gpu_check [--videos 100000] [--candidates 200] [--device cuda]

Prints JSON: encoder queries/s per batch size (trimmed tokens and the full 77-token context),
stage-1 max-frame scoring over every frame of `--videos` videos (one GEMM per query batch), and
the full GLCCL re-rank of `--candidates` candidates per query, and the exhaustive path (every video
scored with S, top 10) per batch of 1 and 32 queries. Random ViT-B/32-sized weights.
`--device cpu` runs the same script on the CPU (fp32), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from model.device import resolve_device


def _timed(fn: Callable[[], object], device: torch.device, repeats: int = 10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench.gpu_check")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--videos", type=int, default=100_000)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--pool", type=int, default=2000)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--backbone", default="ViT-B-32")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError:
        print("gpu_check: error: no CUDA device (use --device cpu to check the script)", file=sys.stderr)
        return 1
    from model.encoders import trim_tokens
    from model.features import VideoFeatures
    from model.glccl import RetrievalModel, make_config
    from model.scoring import score_chunked
    from ops.load.loadtest import DEFAULT_QUERIES

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone=args.backbone, num_frames=args.frames)).eval()
    model = model.to(device, dtype)
    queries = list(DEFAULT_QUERIES)
    out: dict[str, object] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    out["dtype"], out["torch"] = str(dtype), torch.__version__
    encoder: dict[str, float] = {}
    for b in args.batches:
        texts = (queries * (b // len(queries) + 1))[:b]
        trimmed = trim_tokens(model.tokenizer()(texts)).to(device)
        full = model.full_tokenizer()(texts).to(device)
        encoder[f"trim_b{b}"] = round(b / _timed(lambda t=trimmed: model.encode_text(t), device), 1)
        encoder[f"full77_b{b}"] = round(b / _timed(lambda t=full: model.encode_text(t), device), 1)
    out["encoder_queries_per_s"] = encoder

    d, f = model.config.embed_dim, args.frames
    frames = torch.randn(args.videos * f, d, device=device, dtype=dtype)  # every frame vector
    q = model.encode_text(trim_tokens(model.tokenizer()(queries[:32])).to(device))
    stage1 = _timed(lambda: (q.sentence @ frames.T).view(32, args.videos, f).amax(-1).topk(args.candidates), device)
    out["stage1_maxframe_ms_per_batch32"] = round(stage1 * 1000, 3)
    cand = VideoFeatures(
        frames[: args.candidates * f].view(args.candidates, f, d),
        torch.ones(args.candidates, f, dtype=torch.bool, device=device),
    )
    pool = VideoFeatures(
        frames[: args.pool * f].view(args.pool, f, d), torch.ones(args.pool, f, dtype=torch.bool, device=device)
    )
    narrow = _timed(lambda: model.head.coarse(q[:1], pool).topk(args.candidates), device)
    out["narrow_ms_per_query"] = round(narrow * 1000, 3)  # the exact (S_vs + S_vw) / 2 over a pool
    rerank = _timed(lambda: score_chunked(model.head, q[:1], cand, 1, 4096), device)
    out["rerank_ms_per_query"] = round(rerank * 1000, 3)
    batched = _timed(lambda: score_chunked(model.head, q, cand, 32, 4096), device)
    out["full_score_pairs_per_s"] = round(32 * args.candidates / batched)
    out["exhaustive_ms"] = exhaustive_ms(model, q, frames.view(args.videos, f, d), device)
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(out, indent=2))
    return 0


def exhaustive_ms(model: torch.nn.Module, text: object, frames: torch.Tensor, device: torch.device) -> dict[str, float]:
    """The service's exhaustive path (service/resident.py) over every video: ms per batch of 1 and of 32."""
    import numpy as np

    from service.resident import ResidentCorpus

    n, f, _ = frames.shape
    resident = ResidentCorpus(device, frames.dtype)
    resident.frames, resident.rows = frames, n
    resident.mask = torch.ones(n, f, dtype=torch.bool, device=device)
    resident.alive = torch.ones(n, dtype=torch.bool, device=device)
    resident.ids, resident.times = [f"v{i}" for i in range(n)], np.zeros((n, f), np.float32)
    return {
        f"batch{b}": round(1000 * _timed(lambda b=b: resident.search(model.head, text[:b], [10] * b), device, 3), 2)
        for b in (1, 32)
    }


if __name__ == "__main__":
    sys.exit(main())
