"""The load generator against a real uvicorn server (its own process) whose latency is known."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ops.commands.cli import main
from ops.load.loadtest import DEFAULT_QUERIES, check_target, run_loadtest, search_url
from ops.load.report import percentile
from ops.load.samples import LoadConfig
from ops.support.servers import free_port

SERVER_APP = """
import asyncio

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

BODY = {"query": "q", "results": [{"video_id": "video1", "score": 1.0, "best_frame": 0, "best_time_s": 0.0}]}
stats = {"hits": {}, "queries": [], "top_k": [], "auth": []}
one_at_a_time = asyncio.Lock()


async def record(request):
    body = await request.json()
    path = request.url.path
    stats["hits"][path] = stats["hits"].get(path, 0) + 1
    stats["queries"].append(body["query"])
    stats["top_k"].append(body.get("top_k"))
    stats["auth"].append(request.headers.get("authorization"))
    return stats["hits"][path]


async def search(request):  # a fixed 20 ms
    await record(request)
    await asyncio.sleep(0.020)
    return JSONResponse(BODY)


async def limited(request):  # every 4th arrival is refused at once
    if await record(request) % 4 == 0:
        return JSONResponse({"detail": "overloaded"}, status_code=429, headers={"Retry-After": "1"})
    await asyncio.sleep(0.005)
    return JSONResponse(BODY)


async def serial(request):  # one request at a time, 50 ms each: 20 requests/s at most
    await record(request)
    async with one_at_a_time:
        await asyncio.sleep(0.050)
    return JSONResponse(BODY)


async def get_stats(request):
    return JSONResponse(stats)


async def reset(request):
    stats.update(hits={}, queries=[], top_k=[], auth=[])
    return JSONResponse({})


app = Starlette(routes=[
    Route("/search", search, methods=["POST"]),
    Route("/limited/search", limited, methods=["POST"]),
    Route("/serial/search", serial, methods=["POST"]),
    Route("/stats", get_stats),
    Route("/reset", reset, methods=["POST"]),
])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a uvicorn server in a process of its own, so its timing does not share our event loop."""
    root = tmp_path_factory.mktemp("loadtest-server")
    (root / "known_latency_app.py").write_text(SERVER_APP)
    port = free_port()
    log = open(root / "server.log", "wb")
    cmd = [sys.executable, "-m", "uvicorn", "known_latency_app:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/stats", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((root / "server.log").read_text()) from None
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture
def stats(server):
    httpx.post(f"{server}/reset").raise_for_status()
    return lambda: httpx.get(f"{server}/stats").json()


def test_figures_match_a_server_with_known_latency(server, stats, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "latency.png"
    argv = ["loadtest", "--url", server, "--rate", "50", "--duration", "2.5", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report  # the same JSON on stdout
    assert report["requests"] == 125 and stats()["hits"] == {"/search": 125}
    assert report["status_counts"] == {"200": 125}
    assert report["errors"] == {"timeout": 0, "connect": 0}
    assert report["achieved_rate"] == pytest.approx(50, rel=0.10)
    assert report["sent_rate"] == pytest.approx(50, rel=0.10)
    latency = report["latency_ms"]
    # The server sleeps 20 ms, so no answer can come sooner; the slack covers a busy 2-core machine.
    assert 20 <= latency["p50"] < 20 + 40
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert sum(b["sent"] for b in report["timeline"]) == 125 and len(report["timeline"]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_counts_by_status_code(server, stats):
    config = LoadConfig(url=search_url(f"{server}/limited"), rate=50, duration_s=2, queries=DEFAULT_QUERIES)
    report, samples = run_loadtest(config)
    assert report["status_counts"] == {"200": 75, "429": 25}  # every 4th of 100 arrivals
    assert stats()["hits"] == {"/limited/search": 100}
    assert len(samples) == 100 and sum(s.status == 429 for s in samples) == 25
    assert 5 <= report["latency_ms_2xx"]["p50"]


def test_open_loop_keeps_the_rate_and_shows_the_queue_growing(server, stats):
    # 40/s offered to a server that does 20/s: a closed loop would quietly send 20/s at ~50 ms each.
    config = LoadConfig(url=search_url(f"{server}/serial"), rate=40, duration_s=2, queries=DEFAULT_QUERIES)
    report, samples = run_loadtest(config)
    assert report["status_counts"] == {"200": 80}
    assert report["sent_rate"] == pytest.approx(40, rel=0.10)  # sent on schedule...
    assert report["achieved_rate"] < 0.7 * 40  # ...answered at about the server's 20/s
    ordered = sorted(samples, key=lambda s: s.scheduled_s)
    early = percentile([s.latency_s for s in ordered[:40]], 50)
    late = percentile([s.latency_s for s in ordered[40:]], 50)
    # Request i waits for the i before it: ~0.05 + 0.025 i s, so halves differ by about a second.
    assert late > early + 0.5
    assert report["latency_ms"]["max"] > 1500
    p50s = [b["p50_ms"] for b in report["timeline"]]
    assert p50s == sorted(p50s)


def test_query_file_top_k_and_api_key_are_sent(server, stats, tmp_path):
    queries = tmp_path / "queries.txt"
    queries.write_text("# one query per line\na blue square grows\n\na red circle moves left\n")
    argv = ["loadtest", "--url", f"{server}/search", "--rate", "20", "--duration", "0.5"]
    argv += ["--queries", str(queries), "--top-k", "3", "--api-key", "secret"]
    assert main(argv) == 0
    seen = stats()
    assert seen["hits"] == {"/search": 10}
    assert set(seen["queries"]) == {"a blue square grows", "a red circle moves left"}
    assert set(seen["top_k"]) == {3} and set(seen["auth"]) == {"Bearer secret"}


def test_connection_errors_are_counted_not_raised():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    report, _ = run_loadtest(LoadConfig(url=search_url(url), rate=20, duration_s=0.5, queries=("a cross",)))
    assert report["errors"]["connect"] == 10 and report["status_counts"] == {}
    assert report["achieved_rate"] == 0 and report["latency_ms"]["p50"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "0", "--duration", "1"], "--rate must be above 0"),
        (["--rate", "10", "--duration", "0"], "--duration must be above 0"),
        (["--rate", "10", "--duration", "1", "--url", "http://192.0.2.7:8000"], "refusing to send load to '192.0.2.7'"),
        (["--rate", "10", "--duration", "1", "--queries", "/nonexistent/queries.txt"], "No such file"),
        (["--rate", "10", "--duration", "1", "--timeout", "0"], "--timeout must be above 0"),
    ],
)
def test_bad_arguments_exit_with_one_line(extra, message, capsys):
    argv = ["loadtest", "--url", "http://127.0.0.1:9", *extra]  # a later --url wins
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("glccl loadtest: error:") and message in err[0], err


def test_only_loopback_or_named_hosts_are_targets():
    for url in ("http://127.0.0.1:8000", "http://127.8.9.10", "http://[::1]:8000", "http://localhost:8000"):
        check_target(url)
    for url in ("http://10.0.0.5:8000", "http://192.168.1.2", "http://example.com", "http://api:8000"):
        with pytest.raises(ValueError, match="only loopback"):
            check_target(url)
    assert check_target("http://api:8000", ["api"]) == "api"
    assert (
        search_url("http://h:1") == "http://h:1/search" and search_url("http://h:1/x/search/") == "http://h:1/x/search"
    )
    with pytest.raises(ValueError, match="http"):
        search_url("ftp://h/search")


def test_png_is_drawn_from_the_samples(tmp_path):
    from ops.load.report import plot, summarize
    from ops.load.samples import Sample

    config = LoadConfig(url="http://127.0.0.1:1/search", rate=10, duration_s=0.3, queries=("q",))
    samples = [Sample(0, 0.0, 0.0, 0.02, 200, None), Sample(1, 0.1, 0.0, 0.03, 429, None)]
    samples.append(Sample(2, 0.2, 0.0, 10.0, None, "timeout"))
    report = summarize(config, samples, 10.2)
    assert report["status_counts"] == {"200": 1, "429": 1} and report["errors"]["timeout"] == 1
    plot(samples, report, tmp_path / "deep" / "plot.png")
    assert Path(tmp_path / "deep" / "plot.png").read_bytes()[:4] == b"\x89PNG"


def _locust(host: str, tmp_path: Path) -> subprocess.CompletedProcess:
    locustfile = Path(__file__).resolve().parents[2] / "ops" / "load" / "locustfile.py"
    cmd = [str(Path(sys.executable).parent / "locust"), "-f", str(locustfile), "--host", host, "--headless"]
    cmd += ["-u", "4", "-r", "4", "-t", "2s", "--only-summary", "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_locustfile_posts_the_queries_and_refuses_other_hosts(server, stats, tmp_path):
    done = _locust(server, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (entry,) = json.loads(done.stdout)
    seen = stats()
    assert entry["name"] == "/search" and entry["num_failures"] == 0
    # 4 users, one request a second each; the server may also count those cut off by the stop
    assert 4 <= entry["num_requests"] <= seen["hits"]["/search"] <= entry["num_requests"] + 4
    assert set(seen["queries"]) <= set(DEFAULT_QUERIES)
    refused = _locust("http://192.0.2.7:8000", tmp_path)  # never contacted: the run stops first
    assert refused.returncode == 2 and "refusing to send load to '192.0.2.7'" in refused.stderr
    assert json.loads(refused.stdout) == [] or all(e["num_requests"] == 0 for e in json.loads(refused.stdout))
