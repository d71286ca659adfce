"""`glccl bench stores`: extraction speed, store footprint and read latency, index build time and
candidate-search latency at corpus sizes of 10,000 and 100,000 videos (D=512, F=12).

Features are random but structured as topics -> videos -> frames (a video's frames scatter around
its centre, videos around their topic's), as real features are: on i.i.d. Gaussian vectors every
ANN method degenerates, which says nothing about video. Queries are noisy video centres.
Everything runs in a temporary directory with its own redis-server, torn down at the end.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ops.bench.common import check_positive
from ops.report import emit
from ops.support.servers import RedisServer
from service.candidates import CandidateIndex
from service.index import KINDS, FrameIndex, IndexParams, build_shards
from service.stores.base import FrameStore, StoreManifest
from service.stores.local import LocalStore
from service.stores.redis_store import RedisStore

log = logging.getLogger(__name__)


def _status_mib(field: str, pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# Run in a fresh interpreter so that the figures are the store's own, not the benchmark's heap.
_RESIDENT_PROBE = """
import sys
import numpy as np
from service.stores.local import LocalStore
def mib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))
anon, file = mib("RssAnon"), mib("RssFile")
store = LocalStore.open(sys.argv[1])
ids = store.ids()
rng = np.random.default_rng(0)
for _ in range(50):
    store.get([ids[i] for i in rng.choice(len(ids), size=min(200, len(ids)), replace=False)])
print(mib("RssAnon") - anon, mib("RssFile") - file)
"""


def _local_resident(path: Path) -> dict[str, float]:
    """Heap (id map) and mapped page-cache MiB of a process that opens the store and serves 50 reads."""
    done = subprocess.run(
        [sys.executable, "-c", _RESIDENT_PROBE, str(path)], capture_output=True, text=True, check=True
    )
    anon, file = (float(x) for x in done.stdout.split())
    return {"resident_heap_mib": round(anon, 1), "resident_mapped_mib": round(file, 1)}


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _fill(store: FrameStore, n: int, dim: int, frames: int, seed: int = 0, chunk: int = 2000) -> np.ndarray:
    """n random videos into `store`, structured as topics -> videos -> frames; returns the video
    centres [n, D] (queries are noisy centres)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((max(10, n // 100), dim), dtype=np.float32)
    centres = topics[rng.integers(len(topics), size=n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise = rng.standard_normal((m, frames, dim), dtype=np.float32)
        batch = (centres[start : start + m, None] + 0.3 * noise).astype(np.float16)
        mask = np.arange(frames)[None] < rng.integers(frames - 3, frames + 1, m)[:, None]  # some short videos
        times = np.tile(np.arange(frames, dtype=np.float32), (m, 1))
        store.put_many([f"video{start + i:07d}" for i in range(m)], batch, mask, times)
    return centres


def _get_latency(store: FrameStore, ids: list[str], batch: int, repeats: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(repeats):
        chosen = [ids[i] for i in rng.choice(len(ids), size=min(batch, len(ids)), replace=False)]
        start = time.perf_counter()
        store.get(chosen)
        samples.append(time.perf_counter() - start)
    return {f"get{batch}_{k}": v for k, v in _percentiles(samples).items()}


def _bench_extraction(tmp: Path, videos: int, frames: int) -> dict[str, Any]:
    import torch

    from model.checkpoint import save_checkpoint
    from model.data.video import write_mp4
    from model.glccl import RetrievalModel, make_config
    from service.extract import extract_features

    folder = tmp / "videos"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(videos):
        images = rng.integers(0, 256, (2 * frames, 64, 64, 3), dtype=np.uint8)
        write_mp4(folder / f"clip{i:03d}.mp4", images, fps=8)
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-tiny", num_frames=frames, max_words=16))
    ckpt = save_checkpoint(model, tmp / "ckpt")
    summary = extract_features(ckpt, folder, tmp / "features", batch_size=8, device="cpu", progress=False)
    return {
        "model": "glccl-tiny (D=128, 64px)",
        "videos": summary.extracted,
        "frames": frames,
        "seconds": summary.extract_seconds,
        "videos_per_s": summary.videos_per_s,
        "torch_threads": torch.get_num_threads(),
    }


def _bench_local(path: Path, manifest: StoreManifest, n: int) -> tuple[LocalStore, np.ndarray, dict[str, Any]]:
    t0 = time.perf_counter()
    with LocalStore.create(path, manifest, durable=False) as writer:
        centres = _fill(writer, n, manifest.dim, manifest.frames)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = LocalStore.open(path)
    open_s = time.perf_counter() - t0
    row = {
        "videos": n,
        "write_s": round(write_s, 2),
        "open_s": round(open_s, 3),
        "disk_bytes": store.stats()["disk_bytes"],
        **_local_resident(path),  # frames stay in the page cache: only the id map is heap
        **_get_latency(store, store.ids(), 200, 50),
    }
    return store, centres, row


def _bench_redis(server: RedisServer, source: LocalStore, manifest: StoreManifest) -> dict[str, Any]:
    n = len(source)
    store = RedisStore.connect(server.url, f"bench{n}:", manifest=manifest)
    try:
        used0 = int(store.client.info("memory")["used_memory"])
        t0 = time.perf_counter()
        for chunk, batch in source.iter_batches(2000):
            store.put_many(chunk, batch.frames, batch.mask, batch.times)
        write_s = time.perf_counter() - t0
        used = int(store.client.info("memory")["used_memory"]) - used0
        return {
            "videos": n,
            "write_s": round(write_s, 2),
            "used_memory_bytes": used,
            "server_rss_mib": round(_status_mib("VmRSS", str(server.process.pid)), 1) if server.process else None,
            "memory_usage_per_key": round(store.memory_bytes()),
            **_get_latency(store, store.ids(), 200, 50),
        }
    finally:
        store.client.flushall()  # the next size starts from an empty server
        store.close()


def _bench_search(
    store: LocalStore, out: Path, params: IndexParams, queries: np.ndarray, k: int, query_batch: int
) -> tuple[dict[str, Any], list[list[str]]]:
    ids = store.ids()
    out.mkdir()
    t0 = time.perf_counter()
    build_shards(store, ids, out, params, batch_size=2000)
    build_s = time.perf_counter() - t0
    index = CandidateIndex(
        FrameIndex.load(out, params), ids, store.manifest.dim, exact=params.exact, overfetch=store.manifest.frames
    )
    index.search(queries[:query_batch], k)  # warm-up: page the shards in
    samples, found = [], []
    for start in range(query_batch, len(queries), query_batch):
        q = queries[start : start + query_batch]
        t0 = time.perf_counter()
        found += [r[0] for r in index.search(q, k)]
        samples.append(time.perf_counter() - t0)
    row = {"videos": len(ids), "kind": params.kind, "build_s": round(build_s, 2), **_percentiles(samples)}
    row["per_query_ms"] = round(row["p50_ms"] / query_batch, 3)
    row["index_bytes"] = sum(p.stat().st_size for p in out.iterdir())
    if index.base is not None:
        index.base.close()
    shutil.rmtree(out)
    return row, found


def bench_stores(
    sizes: list[int],
    dim: int = 512,
    frames: int = 12,
    kinds: list[str] | None = None,
    shards: int = 2,
    k: int = 100,
    query_batch: int = 16,
    batches: int = 10,
    hnsw_max: int = 10_000,
    redis_max: int = 100_000,
    extract_videos: int = 16,
) -> dict[str, Any]:
    kinds = kinds or list(KINDS)
    started = time.perf_counter()
    manifest = StoreManifest(dim=dim, frames=frames, model_hash="bench")
    shapes = {"dim": dim, "frames": frames, "k": k, "query_batch": query_batch, "batches": batches, "shards": shards}
    local_rows: list[dict[str, Any]] = []
    redis_rows: list[dict[str, Any]] = []
    search_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    extraction = None
    with tempfile.TemporaryDirectory(prefix="glccl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if extract_videos:
            extraction = _bench_extraction(tmp / "extract", extract_videos, frames)
        with RedisServer(tmp / "redis", appendonly=False) as server:
            for n in sizes:
                log.info("bench stores: %d videos", n)
                local, centres, row = _bench_local(tmp / f"features-{n}", manifest, n)
                local_rows.append(row)
                if n <= redis_max:
                    redis_rows.append(_bench_redis(server, local, manifest))
                else:
                    skipped.append(f"redis at {n} videos (over --redis-max {redis_max})")
                rng = np.random.default_rng(1)
                count = query_batch * (batches + 1)
                noise = 0.6 * rng.standard_normal((count, dim))
                queries = (centres[rng.choice(n, size=count)] + noise).astype(np.float32)
                exact: list[list[str]] | None = None
                for kind in kinds:
                    if kind == "hnsw" and n > hnsw_max:
                        skipped.append(
                            f"hnsw at {n} videos (build too slow on this machine; over --hnsw-max {hnsw_max})"
                        )
                        continue
                    params = IndexParams(kind=kind, shards=shards)
                    row, found = _bench_search(local, tmp / f"index-{n}-{kind}", params, queries, k, query_batch)
                    if kind == "flat":
                        exact = found
                    elif exact is not None:
                        overlap = [len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]
                        row["recall_vs_flat"] = round(float(np.mean(overlap)), 3)
                    search_rows.append(row)
                local.close()
                shutil.rmtree(tmp / f"features-{n}")
    last_redis = redis_rows[-1] if redis_rows else None
    return {
        "benchmark": "stores",
        "shapes": shapes,
        "machine": platform.processor() or platform.machine(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "extraction": extraction,
        "stores": {
            "local": {
                "bytes_per_video": round(local_rows[-1]["disk_bytes"] / local_rows[-1]["videos"]),
                "record_bytes": 2 * dim * frames + frames + 4 * frames,  # fp16 frames + mask + times
                "per_size": local_rows,
            },
            "redis": {
                "bytes_per_video": round(last_redis["used_memory_bytes"] / last_redis["videos"])
                if last_redis
                else None,
                "per_size": redis_rows,
            },
        },
        "search": search_rows,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 1),
    }


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("stores", help="extraction, feature stores and candidate search at 10k and 100k videos")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes (videos)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--k", type=int, default=100, help="candidates per query")
    p.add_argument("--query-batch", type=int, default=16, help="queries per search call")
    p.add_argument("--batches", type=int, default=10, help="timed search calls per index")
    p.add_argument("--hnsw-max", type=int, default=10_000, help="largest corpus given an HNSW index")
    p.add_argument("--redis-max", type=int, default=100_000, help="largest corpus loaded into Redis")
    p.add_argument("--extract-videos", type=int, default=16, help="synthetic mp4s for the extraction figure")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, a few batches")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    error = check_positive(args, ("dim", "frames", "shards", "k", "query_batch", "batches", "hnsw_max", "redis_max"))
    if error is None and min(args.sizes) < 1:
        error = "--sizes must be at least 1"
    if error is None and args.extract_videos < 0:
        error = "--extract-videos must be 0 or more"
    if error:
        print(f"glccl bench stores: error: {error}", file=sys.stderr)
        return 2
    if args.quick:
        args.sizes, args.batches, args.extract_videos, args.k = [300, 1000], 3, 2, 20
    result = bench_stores(
        sizes=sorted(args.sizes),
        dim=args.dim,
        frames=args.frames,
        kinds=args.kinds,
        shards=args.shards,
        k=args.k,
        query_batch=args.query_batch,
        batches=args.batches,
        hnsw_max=args.hnsw_max,
        redis_max=args.redis_max,
        extract_videos=args.extract_videos,
    )
    result["quick"] = bool(args.quick)
    emit(result, args.out)
    return 0
