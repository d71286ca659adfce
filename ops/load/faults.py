"""`glccl faults`: faults under a bounded open-loop load, all on loopback; JSON figures.

It builds a small corpus (random weights and features, `ops/load/harness.py`), starts `glccl serve` as a
child process, measures its capacity, then runs each scenario under `glccl loadtest`'s open-loop
load and injects its fault a third of the way in:

- redis_kill: the Redis holding the frames is SIGKILLed, then restarted on its data 2 s later;
- hot_reload: `glccl index build` writes a new generation into the live index folder;
- overload_3x: three times the measured capacity is offered;
- disconnects: a second client hangs up on every request after 20 ms;
- sigterm: the server gets SIGTERM (in-flight requests finish, new connections are refused).

Per scenario: what clients saw (status counts, transport errors), the recovery time (from the end of
the fault to the last failed answer) and whether the same server process answers afterwards.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("glccl.faults")

SCENARIOS = ("redis_kill", "hot_reload", "overload_3x", "disconnects", "sigterm")


class LoadRun:
    """`run_loadtest` in a thread; `at(s)` sleeps until s seconds after the schedule's start."""

    def __init__(self, url: str, rate: float, duration_s: float, timeout_s: float = 10.0) -> None:
        from ops.load.loadtest import DEFAULT_QUERIES, search_url
        from ops.load.samples import LoadConfig

        self.config = LoadConfig(search_url(url), rate, duration_s, DEFAULT_QUERIES, timeout_s=timeout_s)
        self.t0: float | None = None
        self.started = threading.Event()
        self.result: tuple[dict[str, Any], list[Any]] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ops.load.loadtest import run_loadtest

        def on_start(t0: float) -> None:
            self.t0 = t0
            self.started.set()

        self.result = run_loadtest(self.config, on_start)

    def start(self) -> LoadRun:
        self.thread.start()
        self.started.wait(30)
        return self

    def now(self) -> float:
        assert self.t0 is not None
        return time.monotonic() - self.t0

    def at(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds - self.now()))

    def finish(self) -> tuple[dict[str, Any], list[Any]]:
        self.thread.join(self.config.duration_s + self.config.timeout_s + 60)
        if self.result is None:
            raise RuntimeError(f"the load generator did not finish ({self.config.url})")
        return self.result


def recovery_s(samples: list[Any], fault_end_s: float) -> float:
    """From the end of the fault to the answer time of the last request that failed (0 if none after it)."""
    failed = [s.scheduled_s + s.latency_s for s in samples if s.status is None or s.status >= 500 or s.status == 429]
    late = [t for t in failed if t > fault_end_s]
    return round(max(late) - fault_end_s, 3) if late else 0.0


def figures(report: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = ("offered_rate", "requests", "status_counts", "errors", "latency_ms_2xx", "achieved_rate")
    return {**{k: report[k] for k in keep}, **extra}


def probe(url: str) -> int:
    import httpx

    try:
        return httpx.post(f"{url}/search", json={"query": "a red circle moves left"}, timeout=30).status_code
    except httpx.HTTPError:
        return 0


def capacity(url: str, seconds: float, clients: int = 32) -> float:
    """Searches answered 200 per second by `clients` closed-loop clients (each sends again as soon as
    it has its answer), so the queue holds full batches and the client's own pacing plays no part."""
    import asyncio

    import httpx

    from ops.load.loadtest import DEFAULT_QUERIES

    async def measure() -> int:
        done = 0
        stop_at = asyncio.get_running_loop().time() + seconds
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def worker(i: int) -> None:
                nonlocal done
                while asyncio.get_running_loop().time() < stop_at:
                    r = await client.post("/search", json={"query": DEFAULT_QUERIES[i % len(DEFAULT_QUERIES)]})
                    done += r.status_code == 200
                    i += clients

            await asyncio.gather(*(worker(i) for i in range(clients)))
        return done

    return max(1.0, asyncio.run(measure()) / seconds)


def run_faults(work: Path, videos: int, duration_s: float, scenarios: tuple[str, ...]) -> dict[str, Any]:
    import httpx

    from ops.load.harness import ServerProcess, make_corpus, write_random_features
    from ops.load.report import latency_figures
    from ops.support.servers import RedisServer
    from service.catalog import StoreSpec, build_catalog
    from service.index import IndexParams
    from service.stores.local import LocalStore

    logging.getLogger("httpx").setLevel(logging.WARNING)
    corpus = make_corpus(work / "corpus", videos=videos)
    env = {"GLCCL_RELOAD_INTERVAL_S": "1"}
    out: dict[str, Any] = {"videos": videos, "duration_s": duration_s, "scenarios": {}}
    with ServerProcess(corpus["checkpoint"], corpus["index"], work / "capacity.log", env) as server:
        out["capacity_rps"] = cap = round(capacity(server.url, 6.0), 1)
    half, fault_at = cap / 2, duration_s / 3
    log.info("capacity %.1f searches/s; load %.1f/s for %.0f s per scenario", cap, half, duration_s)

    def serve(name: str, index: Path, extra: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(corpus["checkpoint"], index, work / f"{name}.log", {**env, **(extra or {})})
        servers.append(server)  # before start(): stop() also ends one that never became ready
        return server.start()

    for name in scenarios:
        log.info("scenario %s", name)
        servers: list[ServerProcess] = []
        redis: RedisServer | None = None
        try:
            if name == "redis_kill":
                redis = RedisServer(work / "redis", appendonly=True).start()
                index = work / "index-redis"
                with LocalStore.open(corpus["features"]) as source:
                    build_catalog(source, index, IndexParams(kind="flat"), StoreSpec("redis", redis.url, "faults:"))
                server = serve(name, index, {"GLCCL_REDIS_URL": redis.url})
                load = LoadRun(server.url, half, duration_s).start()
                load.at(fault_at)
                redis.kill()
                load.at(fault_at + 2.0)
                redis.start()
                restarted = load.now()
                report, samples = load.finish()
                result = figures(report, fault="redis SIGKILL for 2 s", recovery_s=recovery_s(samples, restarted))
            elif name == "hot_reload":
                server = serve(name, corpus["index"])
                old = httpx.get(f"{server.url}/readyz").json()["generation"]
                load = LoadRun(server.url, half, duration_s).start()
                load.at(fault_at)
                ids = [f"new{i:05d}" for i in range(200)]
                features = write_random_features(work / "features-2", LocalStore.open(corpus["features"]).manifest, ids)
                with LocalStore.open(features) as source:
                    build_catalog(source, corpus["index"], IndexParams(kind="flat"), StoreSpec())
                built = load.now()
                while httpx.get(f"{server.url}/readyz").json()["generation"] == old and load.now() < duration_s:
                    time.sleep(0.05)
                live = load.now()
                report, samples = load.finish()
                result = figures(
                    report, fault="new generation built into the live folder", live_after_build_s=round(live - built, 3)
                )
                result["recovery_s"] = recovery_s(samples, built)
            elif name == "overload_3x":
                server = serve(name, corpus["index"])
                report, samples = LoadRun(server.url, 3 * cap, duration_s).start().finish()
                refused = [s.latency_s for s in samples if s.status == 429]
                result = figures(
                    report,
                    fault="3x capacity offered",
                    latency_ms_429=latency_figures(refused),
                    send_lag_ms=report["send_lag_ms"],
                    recovery_s=recovery_s(samples, duration_s),
                    per_second=[
                        [b["t_s"], b["sent"], b["p50_ms"], b["non_2xx"], b["errors"]] for b in report["timeline"]
                    ],
                )
            elif name == "disconnects":
                server = serve(name, corpus["index"])
                load = LoadRun(server.url, half, duration_s).start()
                rss_before = server.rss()
                quitters = LoadRun(server.url, half, duration_s * 2 / 3, timeout_s=0.02)
                load.at(fault_at)
                quit_report, _ = quitters.start().finish()
                report, samples = load.finish()
                text = httpx.get(f"{server.url}/metrics").text
                line = next((x for x in text.splitlines() if 'kind="client_disconnected"' in x), "x 0")
                result = figures(
                    report,
                    fault=f"a second client hanging up after 20 ms, {quit_report['requests']} times",
                    hung_up=quit_report["errors"],
                    server_saw_disconnects=int(float(line.split()[-1])),
                    rss_mib_before_after=[round(rss_before / 2**20), round(server.rss() / 2**20)],
                    recovery_s=recovery_s(samples, fault_at + duration_s * 2 / 3),
                )
            elif name == "sigterm":
                server = serve(name, corpus["index"])
                load = LoadRun(server.url, half, duration_s).start()
                load.at(fault_at)
                server.terminate()
                code = server.wait(60)
                exited = load.now()
                report, samples = load.finish()
                answered_after = [s for s in samples if s.status is not None and s.scheduled_s > fault_at]
                result = figures(
                    report,
                    fault="SIGTERM",
                    exit_code=code,
                    exit_after_s=round(exited - fault_at, 3),
                    answered_after_sigterm=len(answered_after),
                    broken_mid_request=sum(1 for s in samples if s.error not in (None, "connect")),
                )
            else:
                raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
            if name != "sigterm":
                result["answers_after_without_restart"] = probe(server.url) == 200 and server.process.poll() is None
            out["scenarios"][name] = result
            log.info("%s: %s", name, {k: result[k] for k in ("status_counts", "errors")})
        finally:  # also when a scenario fails: no server or Redis outlives the run
            for started in servers:
                started.stop()
            if redis is not None:
                redis.stop()
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("faults", help="faults under load on loopback (Redis kill, hot reload, 3x load, ...)")
    p.add_argument("--videos", type=int, default=2000, help="videos in the generated corpus")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per scenario")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    p.add_argument("--work", type=Path, default=None, help="folder for the corpus and logs (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ops.report import emit

    if not 1 <= args.duration <= 600:
        raise ValueError(f"--duration must be between 1 and 600 s, got {args.duration:g}")
    scenarios = tuple(args.scenario or SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="glccl-faults-") as tmp:
        work = args.work or Path(tmp)
        emit(run_faults(work, args.videos, args.duration, scenarios), args.out)
    return 0
