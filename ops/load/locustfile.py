"""A Locust scenario for teams that run their load tests with Locust (locust is not a dependency).

    pip install locust
    locust -f ops/load/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 5 -t 60s

Each user posts the queries of `glccl loadtest` (or those of the file in GLCCL_LOADTEST_QUERIES, one
per line) to /search at most once a second, so -u sets an upper bound on the offered rate. Locust
users are closed loop: a user waits for its answer before sending again, so a slow server receives
fewer requests and its latencies look better than at a fixed rate. For latency at a fixed offered
rate, use `glccl loadtest` (open loop).

Like `glccl loadtest`, it only loads loopback hosts unless GLCCL_LOADTEST_ALLOW_HOSTS names others
(comma-separated). GLCCL_API_KEY, if set, is sent as the bearer token; GLCCL_LOADTEST_TOP_K sets top_k.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, constant_throughput, events, task

try:
    from ops.load.loadtest import check_target, read_queries
except ModuleNotFoundError:  # run from a checkout without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ops.load.loadtest import check_target, read_queries

log = logging.getLogger("glccl.locust")

_queries_file = os.environ.get("GLCCL_LOADTEST_QUERIES")
QUERIES = list(read_queries(Path(_queries_file) if _queries_file else None))
TOP_K = int(os.environ["GLCCL_LOADTEST_TOP_K"]) if os.environ.get("GLCCL_LOADTEST_TOP_K") else None
ALLOWED = [h.strip() for h in os.environ.get("GLCCL_LOADTEST_ALLOW_HOSTS", "").split(",") if h.strip()]


@events.test_start.add_listener
def _refuse_other_hosts(environment, **_kwargs) -> None:
    """Stops the run before any request when --host is not loopback or allowed."""
    try:
        check_target(environment.host or "", ALLOWED)
    except ValueError as exc:
        log.error("%s (GLCCL_LOADTEST_ALLOW_HOSTS)", exc)
        environment.process_exit_code = 2
        environment.runner.quit()


class SearchUser(FastHttpUser):
    wait_time = constant_throughput(1)  # at most one request per second per user

    def on_start(self) -> None:
        self.rng = random.Random()
        key = os.environ.get("GLCCL_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @task
    def search(self) -> None:
        body: dict[str, object] = {"query": self.rng.choice(QUERIES)}
        if TOP_K is not None:
            body["top_k"] = TOP_K
        with self.client.post("/search", json=body, headers=self.headers, catch_response=True) as response:
            if response.status_code == 200 and not isinstance(response.json().get("results"), list):
                response.failure("200 without a results list")
