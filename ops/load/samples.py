"""What a load test sends (LoadConfig) and what it measures of each request (Sample): shared by the
generator (`ops/load/loadtest.py`) and its report (`ops/load/report.py`), which import this one way."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_CONNECTIONS = 512  # the default pool: enough for rate x timeout in flight, within a 1024-file ulimit


@dataclass(frozen=True)
class LoadConfig:
    url: str  # the full POST URL, .../search
    rate: float  # offered requests per second
    duration_s: float  # seconds of sending
    queries: tuple[str, ...]
    top_k: int | None = None
    timeout_s: float = 10.0  # a request's limit, counted from its scheduled send time
    api_key: str | None = None
    connections: int | None = None  # pool size; default: enough for rate x timeout in flight

    @property
    def requests(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    @property
    def pool_size(self) -> int:
        return self.connections or min(MAX_CONNECTIONS, max(8, math.ceil(self.rate * self.timeout_s) + 8))


@dataclass(frozen=True)
class Sample:
    index: int
    scheduled_s: float  # send time the schedule gave, from the start of the run
    send_lag_s: float  # how late the client actually started it
    latency_s: float  # from the scheduled send time to the answer (or the error)
    status: int | None  # HTTP status, None on an error
    error: str | None  # "timeout", "connect", or the transport error's class name
