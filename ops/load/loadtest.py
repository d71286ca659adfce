"""`glccl loadtest`: an open-loop load generator for POST /search.

Open loop: request i is sent at t0 + i / rate whatever happened to the earlier ones, and its latency
is measured from that scheduled time. A closed-loop tool (N users, each waiting for its answer
before sending again) slows down with the server and so reports flattering latencies at a rate
nobody chose; here a server that cannot keep up shows it as growing latencies at the offered rate.
Delays inside the client (a full connection pool, a late event loop) count too, for the same reason.

It is a load tool, so it only targets loopback addresses (127.0.0.0/8, ::1, localhost) unless a host
is named with --allow-host, and every run is bounded: at most MAX_REQUESTS requests, MAX_DURATION_S
seconds of sending, and each request's own --timeout after its scheduled time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ops.load.report import plot, summarize
from ops.load.samples import LoadConfig, Sample

log = logging.getLogger("glccl.loadtest")

MAX_RATE = 10_000.0
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 1_000_000
# (the default pool's cap, MAX_CONNECTIONS, lives with LoadConfig in ops/load/samples.py)
# Connections per httpx client. httpcore's pool does work quadratic in its connections (and in the
# requests queued on it) every time a request starts or ends: one client of 512 connections took
# about a core at ~100 requests/s and stalled the generator. So the pool is split into clients of at
# most SHARD connections, and a semaphore per client keeps requests from queuing inside httpcore.
SHARD = 32

# Queries in the style of the synthetic corpus's captions (`glccl synth`): one event, two events in
# order, hard-negative-like swaps. Used when no --queries file is given, and by ops/load/locustfile.py.
DEFAULT_QUERIES: tuple[str, ...] = (
    "a red circle moves left",
    "a blue square grows",
    "a green triangle moves up",
    "a yellow star shrinks",
    "a white cross moves right",
    "a purple ring moves down",
    "an orange diamond stays still",
    "a pink circle moves up",
    "a red square moving right",
    "a blue star is moving left",
    "there is a green ring on a black background",
    "the video shows a yellow diamond growing",
    "we see a white triangle moving down",
    "a purple cross shrinks then an orange circle moves left",
    "a pink star moves right then a red ring grows",
    "first a blue diamond moves up and then a green square shrinks",
    "a yellow circle grows and after that a white star moves down",
    "a purple triangle moves left after an orange square grows",
    "a red cross moves up then a blue circle stays still",
    "a green star moving down",
    "an orange ring appears",
    "a white square appears",
    "a pink triangle is moving up",
    "the video shows a red diamond on a gray background",
    "a circle moves left",
    "a square grows then a star shrinks",
    "a blue ring moves right then a yellow cross moves left",
    "first a white circle shrinks and then a purple star grows",
    "an orange triangle moves down and after that a pink square moves up",
    "a green diamond grows after a red star moves right",
    "there is a yellow square on a navy background",
    "we see a blue cross staying still",
    "a purple circle moves right",
    "a white ring shrinks",
    "an orange star moves up",
    "a pink diamond moves left",
    "a red triangle grows then a green cross shrinks",
    "a yellow ring moves down then a blue triangle moves right",
    "the video shows a purple square moving left on a brown background",
    "first an orange cross moves right and then a white diamond moves down",
    "a green circle stays still then a pink ring grows",
    "a red star is growing",
    "a blue diamond shrinks after a yellow circle moves up",
    "there is a white star",
    "a purple diamond moves up then an orange square stays still",
    "a pink cross grows",
    "a green square moves left and after that a red circle moves down",
    "a yellow triangle stays still",
    "a blue circle moving down then a white cross growing",
    "an orange circle shrinks then a purple ring moves right",
)


def search_url(url: str) -> str:
    """The POST target: URL itself if it ends in /search, else URL + /search."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http(s) URL with a host, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/search"):
        path += "/search"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_target(url: str, allowed_hosts: list[str] | tuple[str, ...] = ()) -> str:
    """The URL's host if it is loopback or named in allowed_hosts; ValueError otherwise (no DNS look-up:
    a name that merely resolves to loopback must be allowed by name)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in {h.lower().strip("[]") for h in allowed_hosts}:
        return host
    if host == "localhost" or host.endswith(".localhost"):
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(
        f"refusing to send load to {host!r}: only loopback addresses are targets unless named with --allow-host {host}"
    )


def read_queries(path: Path | None) -> tuple[str, ...]:
    """One query per line (blank lines and lines starting with # skipped); the built-in list without a file."""
    if path is None:
        return DEFAULT_QUERIES
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    queries = tuple(line for line in lines if line and not line.startswith("#"))
    if not queries:
        raise ValueError(f"query file {path} holds no queries (one per line)")
    return queries


def validate(config: LoadConfig) -> None:
    if not 0 < config.rate <= MAX_RATE:
        raise ValueError(f"--rate must be above 0 and at most {MAX_RATE:g} requests/s, got {config.rate:g}")
    if not 0 < config.duration_s <= MAX_DURATION_S:
        raise ValueError(f"--duration must be above 0 and at most {MAX_DURATION_S:g} s, got {config.duration_s:g}")
    if config.rate * config.duration_s > MAX_REQUESTS:
        raise ValueError(f"--rate x --duration asks for more than {MAX_REQUESTS} requests")
    if config.timeout_s <= 0:
        raise ValueError(f"--timeout must be above 0, got {config.timeout_s:g}")
    if config.top_k is not None and config.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {config.top_k}")
    if config.connections is not None and config.connections < 1:
        raise ValueError(f"--connections must be at least 1, got {config.connections}")
    if not config.queries:
        raise ValueError("no queries to send")


# ----------------------------------------------------------------------------- sending


async def _send(
    client: Any, gate: asyncio.Semaphore, config: LoadConfig, i: int, at: float, t0: float, out: list[Sample | None]
) -> None:
    import httpx

    loop = asyncio.get_running_loop()
    body: dict[str, Any] = {"query": config.queries[i % len(config.queries)]}
    if config.top_k is not None:
        body["top_k"] = config.top_k
    started = loop.time()
    status: int | None = None
    error: str | None = None
    try:
        # The deadline counts from the scheduled time, like the latency, so the run ends by duration + timeout.
        async with asyncio.timeout_at(at + config.timeout_s), gate:  # waiting for a connection counts too
            response = await client.post(config.url, content=json.dumps(body).encode())
        status = response.status_code
    except (TimeoutError, httpx.TimeoutException):
        error = "timeout"
    except httpx.ConnectError:
        error = "connect"
    except (httpx.HTTPError, OSError) as exc:
        error = type(exc).__name__
    done = loop.time()
    out[i] = Sample(i, at - t0, max(0.0, started - at), done - at, status, error)


async def run_async(config: LoadConfig, on_start: Callable[[float], None] | None = None) -> tuple[list[Sample], float]:
    """Sends the schedule; returns every request's sample and the run's wall time in seconds.

    `on_start(t0)` hears the schedule's start on the time.monotonic() clock (the event loop's), so a
    caller injecting faults can place them on the samples' time axis."""
    import httpx

    n = config.requests
    loop = asyncio.get_running_loop()
    headers = {"content-type": "application/json", "user-agent": "glccl-loadtest"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    pool = config.pool_size
    shards = math.ceil(pool / SHARD)
    sizes = [pool // shards + (k < pool % shards) for k in range(shards)]
    samples: list[Sample | None] = [None] * n
    async with contextlib.AsyncExitStack() as stack:
        # httpx's own timeouts are per phase; the total per request is enforced by _send.
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    headers=headers,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                    timeout=config.timeout_s,
                )
            )
            for size in sizes
        ]
        gates = [asyncio.Semaphore(size) for size in sizes]
        t0 = loop.time() + 0.01
        if on_start is not None:
            on_start(t0)
        tasks = []
        for i in range(n):
            at = t0 + i / config.rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            k = i % shards
            tasks.append(asyncio.create_task(_send(clients[k], gates[k], config, i, at, t0, samples)))
        await asyncio.gather(*tasks)
    return [s for s in samples if s is not None], loop.time() - t0


def run_loadtest(
    config: LoadConfig, on_start: Callable[[float], None] | None = None
) -> tuple[dict[str, Any], list[Sample]]:
    validate(config)
    samples, wall = asyncio.run(run_async(config, on_start))
    return summarize(config, samples, wall), samples


# ----------------------------------------------------------------------------- command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="open-loop load test of POST /search (loopback targets only, unless --allow-host)",
        description="Sends POST /search at a fixed rate regardless of answers; prints JSON figures.",
    )
    p.add_argument("--url", required=True, help="the service's base URL (or its /search URL)")
    p.add_argument("--rate", type=float, required=True, help="offered requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of sending")
    p.add_argument("--queries", type=Path, default=None, help="file with one query per line (default: built in)")
    p.add_argument("--top-k", type=int, default=None, help="top_k of each search (default: the service's)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take from its send time")
    p.add_argument(
        "--api-key", default=os.environ.get("GLCCL_API_KEY") or None, help="bearer token (default: GLCCL_API_KEY)"
    )
    p.add_argument("--connections", type=int, default=None, help="connection pool size (default: rate x timeout)")
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="HOST", help="a non-loopback host that may be loaded"
    )
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    p.add_argument("--plot", type=Path, default=None, help="write the latency-over-time PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ops.report import emit

    url = search_url(args.url)
    check_target(url, args.allow_host)
    config = LoadConfig(
        url=url,
        rate=args.rate,
        duration_s=args.duration,
        queries=read_queries(args.queries),
        top_k=args.top_k,
        timeout_s=args.timeout,
        api_key=args.api_key,
        connections=args.connections,
    )
    validate(config)
    # httpx logs every request at INFO: thousands of lines that would bury the report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("loadtest: %d requests at %g/s to %s", config.requests, config.rate, config.url)
    report, samples = run_loadtest(config)
    if args.plot is not None:
        plot(samples, report, args.plot)
    emit(report, args.out)
    return 0
