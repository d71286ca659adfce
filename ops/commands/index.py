"""`glccl index ...`: build the candidate index and the frame store from extracted features."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser("index", help="build and inspect the search index")
    commands = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = commands.add_parser(
        "build",
        help="frame store + FAISS candidate index from a features directory",
        description="Copy the features of FEATURES_DIR into the frame store (a local store inside "
        "INDEX_DIR, or Redis) and build FAISS shards over every frame vector. The build goes into a "
        "new generation and replaces the live one only when complete.",
    )
    b.add_argument("--features", type=Path, required=True, help="output of `glccl extract`")
    b.add_argument("--out", type=Path, required=True, help="index directory (created, or given a new generation)")
    b.add_argument("--store", default="local", choices=["local", "redis"])
    b.add_argument("--redis-url", default=None, help="redis://host:6379/0 (default: $GLCCL_REDIS_URL)")
    b.add_argument("--redis-prefix", default="glccl:", help="key prefix of this corpus in Redis")
    b.add_argument("--redis-cluster", action="store_true", help="--redis-url names a node of a Redis Cluster")
    b.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"], help="flat is exact")
    b.add_argument("--shards", type=int, default=1, help="FAISS shards, searched in parallel")
    b.add_argument("--nlist", type=int, default=0, help="IVF lists per shard (0: about 2 sqrt(vectors))")
    b.add_argument("--nprobe", type=int, default=32, help="IVF lists probed per query")
    b.add_argument("--codes", default="fp16", choices=["fp16", "sq8"], help="IVF codes (sq8: half the memory)")
    b.add_argument(
        "--vectors",
        default="cosine",
        choices=["cosine", "segments", "frames"],
        help="indexed: normalised frames (cosine), --segments runs of frames per video (smaller), raw frames",
    )
    b.add_argument("--segments", type=int, default=4, help="vectors per video with --vectors segments")
    b.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    b.add_argument("--ef-search", type=int, default=128, help="HNSW search beam")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.set_defaults(func=run_build)

    i = commands.add_parser("info", help="print an index's manifest and counts as JSON")
    i.add_argument("--index", type=Path, required=True)
    i.add_argument("--redis-url", default=None, help="overrides the URL recorded at build time")
    i.set_defaults(func=run_info)


def _fail(message: str) -> int:
    print(f"glccl index: error: {message}", file=sys.stderr)
    return 2


def run_build(args: argparse.Namespace) -> int:
    for name in ("shards", "nprobe", "hnsw_m", "ef_search", "segments"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.nlist < 0:
        return _fail("--nlist must be 0 or more")
    url = args.redis_url or os.environ.get("GLCCL_REDIS_URL")
    if args.store == "redis" and not url:
        return _fail("--store redis needs --redis-url (or GLCCL_REDIS_URL)")
    from service.catalog import StoreSpec, build_catalog
    from service.index import IndexParams
    from service.stores.local import LocalStore

    params = IndexParams(
        kind=args.kind,
        shards=args.shards,
        nlist=args.nlist,
        nprobe=args.nprobe,
        codes=args.codes,
        vectors=args.vectors,
        segments=args.segments,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
    )
    spec = StoreSpec(backend=args.store, url=url, prefix=args.redis_prefix, cluster=args.redis_cluster)
    with LocalStore.open(args.features, readonly=True) as source:
        if len(source) == 0:
            print(f"glccl index: error: {args.features} holds no features", file=sys.stderr)
            return 1
        info = build_catalog(source, args.out, params, spec, progress=not args.no_progress)
    print(json.dumps(info))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from service.catalog import Catalog

    with Catalog.open(args.index, redis_url=args.redis_url or os.environ.get("GLCCL_REDIS_URL")) as catalog:
        report = {**catalog.info.to_dict(), "live": catalog.candidates.stats(), "store_videos": len(catalog.store)}
    print(json.dumps(report, indent=2))
    return 0
