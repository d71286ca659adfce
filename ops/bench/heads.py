"""Scoring throughput and peak memory of each head at ViT-B/32 shapes.

Each head runs in its own spawned process so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.config import ModelConfig
from model.features import TextFeatures, VideoFeatures
from model.heads import HEADS, build_head, head_spec
from model.scoring import score_chunked
from ops.bench.common import check_positive
from ops.report import emit


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _features(texts: int, videos: int, dim: int, frames: int, words: int) -> tuple[TextFeatures, VideoFeatures]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(min(6, words), words + 1, (texts,), generator=g)  # captions are often shorter than Nw
    word_mask = torch.arange(words)[None] < lengths[:, None]
    text = TextFeatures(torch.randn(texts, dim, generator=g), torch.randn(texts, words, dim, generator=g), word_mask)
    video = VideoFeatures(torch.randn(videos, frames, dim, generator=g), torch.ones(videos, frames, dtype=torch.bool))
    return text, video


def _one_head(name: str, params: dict[str, Any], queue: mp.Queue) -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        backbone="ViT-B-32",
        head=name,
        embed_dim=params["dim"],
        num_frames=params["frames"],
        max_words=params["words"],
        temporal_layers=head_spec(name).temporal_layers,
        csc_weight=head_spec(name).csc_weight,
    )
    head = build_head(config).eval()
    text, video = _features(params["texts"], params["videos"], params["dim"], params["frames"], params["words"])
    base_rss = _rss_mib()
    with torch.inference_mode():
        score_chunked(head, text[:8], video[:64])  # warm-up: allocator, kernels
        start = time.perf_counter()
        scores = score_chunked(head, text, video, params["chunk_texts"], params["chunk_videos"])["S"]
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    pairs = params["texts"] * params["videos"]
    queue.put(
        {
            "head": name,
            "seconds": round(seconds, 3),
            "pairs_per_s": round(pairs / seconds),
            "peak_rss_mib": round(peak, 1),
            "peak_over_inputs_mib": round(peak - base_rss, 1),
            "finite": bool(torch.isfinite(scores).all()),
        }
    )


def bench_heads(
    texts: int = 1000,
    videos: int = 1000,
    dim: int = 512,
    frames: int = 12,
    words: int = 32,
    heads: list[str] | None = None,
    chunk_texts: int = 32,
    chunk_videos: int = 128,
) -> dict[str, Any]:
    names = heads or list(HEADS)
    for name in names:
        head_spec(name)  # unknown names fail before any work
    params = dict(
        texts=texts,
        videos=videos,
        dim=dim,
        frames=frames,
        words=words,
        chunk_texts=chunk_texts,
        chunk_videos=chunk_videos,
    )
    ctx = mp.get_context("spawn")
    results = []
    for name in tqdm(names, desc="heads", unit="head"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_one_head, args=(name, params, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"benchmark of head {name!r} failed (exit code {proc.exitcode})")
        results.append(queue.get())
    base = {r["head"]: r["pairs_per_s"] for r in results}
    for r in results:
        r["fits_4gib"] = r["peak_rss_mib"] <= 4096
        if "meanP" in base:
            r["cost_vs_meanP"] = round(base["meanP"] / r["pairs_per_s"], 2)
        if "xclip" in base:
            r["cost_vs_xclip"] = round(base["xclip"] / r["pairs_per_s"], 2)
    return {
        "benchmark": "heads",
        "shapes": params,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("heads", help="scoring throughput and peak memory of every head")
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--videos", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512, help="D (512 for ViT-B/32)")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--words", type=int, default=32)
    p.add_argument("--heads", nargs="+", default=None, help="heads to run (default: all)")
    p.add_argument("--chunk-texts", type=int, default=32)
    p.add_argument("--chunk-videos", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    error = check_positive(args, ("texts", "videos", "dim", "frames", "words", "chunk_texts", "chunk_videos"))
    if error:
        print(f"glccl bench heads: error: {error}", file=sys.stderr)
        return 2
    result = bench_heads(
        texts=args.texts,
        videos=args.videos,
        dim=args.dim,
        frames=args.frames,
        words=args.words,
        heads=args.heads,
        chunk_texts=args.chunk_texts,
        chunk_videos=args.chunk_videos,
    )
    emit(result, args.out)
    return 0
