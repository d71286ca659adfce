"""The app's lifespan: load the state (unless given), start the batcher, warm up, watch the index
folder and the event loop; undo it all in reverse on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from service.batcher import Batcher
from service.metrics import Metrics
from service.reload import IndexWatcher
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")


async def watch_loop_lag(metrics: Metrics, every_s: float = 0.25) -> None:
    """Records how late a sleep wakes up: under CPU or GIL starvation requests are read that late."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(every_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - before - every_s))


def make_batcher(state: ServiceState, settings: Settings, metrics: Metrics) -> Batcher:
    """Encoding and scoring as two pipelined stages (or one search per batch without `pipeline`)."""
    engine = state.engine
    return Batcher(
        [engine.encode_batch, engine.score_batch] if settings.pipeline else engine.search,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        on_batch=lambda info: metrics.batch_size.observe(info.size),
        max_queue_wait_s=settings.queue_wait_limit_s,
        max_batch_ms=settings.max_batch_ms,
    )


def lifespan(
    settings: Settings, metrics: Metrics, state: ServiceState | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan of an app serving `settings`; a ready-made `state` (tests) is used and left open."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        app.state.ready = False
        loaded = state if state is not None else await asyncio.to_thread(ServiceState.load, settings)
        app.state.service = loaded
        batcher = make_batcher(loaded, settings, metrics)
        await batcher.start()
        app.state.batcher = batcher
        await asyncio.to_thread(loaded.engine.warmup)
        metrics.encode_cache = loaded.engine.cache
        metrics.videos.set(len(loaded.catalog))
        watcher = IndexWatcher(app, settings)
        watching = asyncio.create_task(watcher.run()) if settings.reload_interval_s > 0 else None
        lag = asyncio.create_task(watch_loop_lag(metrics))
        app.state.ready = True
        metrics.ready.set(1)
        log.info("ready: %d videos, device %s", len(loaded.catalog), loaded.engine.device)
        try:
            yield
        finally:
            app.state.ready = False
            metrics.ready.set(0)
            tasks = [lag] if watching is None else [lag, watching]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.stop()
            watcher.close()
            if state is None:
                loaded.close()

    return run
