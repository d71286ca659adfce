"""Prometheus metrics of the service, on a registry of its own so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STAGES = ("queue", "encode", "candidates", "frames", "narrow", "rerank", "exhaustive", "total")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "glccl_search_stage_seconds",
            "Latency of each stage of a search",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "glccl_batch_size",
            "Queries per encoded batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.queue_depth = Gauge("glccl_queue_depth", "Queries waiting for a batch", registry=self.registry)
        self.batch_limit = Gauge(
            "glccl_batch_limit", "Most queries the next batch takes (GLCCL_MAX_BATCH_MS)", registry=self.registry
        )
        self.in_flight = Gauge(
            "glccl_search_in_flight",
            "Search requests in progress (capped by GLCCL_MAX_IN_FLIGHT)",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "glccl_event_loop_lag_seconds",
            "How late the event loop wakes a task (sampled every 0.25 s): time it reads requests late",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "glccl_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter("glccl_errors_total", "Errors by kind", ["kind"], registry=self.registry)
        self.videos = Gauge("glccl_videos", "Videos in the catalog", registry=self.registry)
        self.reloads = Counter("glccl_index_reloads_total", "New index generations gone live", registry=self.registry)
        self.ready = Gauge("glccl_ready", "1 when the service answers searches", registry=self.registry)
        # the query-encoding cache's counts live in the engine; read at scrape time (set once loaded)
        self.encode_cache: Any = None
        self.registry.register(_CacheCollector(self))

    def observe_timing(self, timing_ms: dict[str, float]) -> None:
        for stage in STAGES:
            if stage in timing_ms:
                self.stage_seconds.labels(stage).observe(timing_ms[stage] / 1000)


class _CacheCollector:
    """glccl_encode_cache_total{result="hit|miss"} and glccl_encode_cache_entries, from the engine's cache."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self.metrics.encode_cache
        total = CounterMetricFamily(
            "glccl_encode_cache", "Query encodings served from the cache or encoded", labels=["result"]
        )
        entries = GaugeMetricFamily("glccl_encode_cache_entries", "Query encodings held in the cache")
        total.add_metric(["hit"], cache.hits if cache else 0)
        total.add_metric(["miss"], cache.misses if cache else 0)
        entries.add_metric([], len(cache) if cache else 0)
        yield total
        yield entries
