"""Hot reload: the service follows its index folder without a restart.

Every `reload_interval_s` the watcher reads `index.json`:

- same generation: `Catalog.refresh()` picks up the puts and deletes other replicas logged;
- a new generation (a `glccl index build` into the live folder): it is opened beside the old one,
  the changes this replica made through the API since the old build are carried into it (so an
  acknowledged PUT is never lost to a rebuild from older features), and it is swapped into the
  service's `LiveCatalog`, which the engine reads too. A search batch takes the live catalog once,
  so each batch sees one generation.

The old catalog is closed only after `RETIRE_AFTER_S`, so a request that had already picked it up
finishes on it. A generation that fails to open is logged and counted, the old one keeps serving,
and it is not retried until index.json changes again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.catalog import Catalog, IndexInfo
from service.settings import Settings
from service.state import ServiceState, open_catalog

log = logging.getLogger(__name__)

RETIRE_AFTER_S = 30.0


def carry_over(old: Catalog, fresh: Catalog) -> int:
    """Re-applies to `fresh` the API changes logged in `old`; returns how many."""
    changes = old.written_changes()
    for video_id, op in changes.items():
        if op == "del":
            fresh.delete_video(video_id)
        elif op == "meta":
            fresh.set_metadata(video_id, old.get_metadata([video_id])[0])
        elif old.has_frames(video_id):
            batch = old.get_frames([video_id])
            meta = old.get_metadata([video_id])[0]
            fresh.put_video(video_id, batch.frames[0], batch.mask[0], batch.times[0], meta)
    if changes:
        log.info("carried %d change(s) from %s into %s", len(changes), old.generation, fresh.generation)
    return len(changes)


class IndexWatcher:
    """Polls the index folder and swaps the live catalog; run() is the lifespan's background task."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.failed_generation: str | None = None
        self.retired: list[tuple[float, Catalog]] = []

    @property
    def state(self) -> ServiceState:
        return self.app.state.service

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad day for the store or the disk: keep serving, try again later
                log.exception("index check failed")
                self.app.state.metrics.errors.labels("reload").inc()

    async def check(self) -> bool:
        """True when a new generation went live."""
        self._close_retired(time.monotonic() - RETIRE_AFTER_S)
        catalog = self.state.catalog
        info = await asyncio.to_thread(IndexInfo.read, catalog.index_dir)
        generation = info.generation
        if generation == catalog.generation:
            await asyncio.to_thread(catalog.refresh)
            self.app.state.metrics.videos.set(len(catalog))
            return False
        if generation == self.failed_generation:
            return False
        try:
            fresh = await asyncio.to_thread(open_catalog, self.settings, catalog.index_dir)
        except Exception:
            self.failed_generation = generation
            self.app.state.metrics.errors.labels("reload").inc()
            log.exception("could not open %s; still serving %s", generation, catalog.generation)
            return False
        # Writes wait while the changes move, so none lands in the old generation after the copy.
        async with self.app.state.write_lock:
            try:
                await asyncio.to_thread(carry_over, catalog, fresh)
            except BaseException:
                fresh.close()
                raise
            self.state.live.swap(fresh)
        self.retired.append((time.monotonic(), catalog))
        self.app.state.metrics.videos.set(len(fresh))
        self.app.state.metrics.reloads.inc()
        log.info("index %s: now serving %s (%d videos)", catalog.index_dir, generation, len(fresh))
        return True

    def _close_retired(self, before: float) -> None:
        keep = []
        for since, old in self.retired:
            if since <= before:
                old.close()
            else:
                keep.append((since, old))
        self.retired = keep

    def close(self) -> None:
        self._close_retired(float("inf"))
