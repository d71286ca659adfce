"""Dynamic batching: futures on a bounded queue, flushed when full or when the oldest has waited.

One worker task takes requests off the queue and sends each batch through the stages of `process`
(one callable, or several that each take the previous one's output), every stage in a worker thread
of its own (so the event loop keeps accepting requests while torch computes), and resolves every
future. With two stages (encode, then score) one batch is scored while the next is encoded: two
cores busy instead of one. A stage holds one batch at a time and hands it on only when the next
stage is free, so batches never pile up between stages: requests wait in the queue, where they
join bigger batches. So a batch needs no timer to fill: with `max_wait_s` 0 (the service's default)
it is whatever queued while the first stage was busy, and a lone request starts at once.
An error in `process` reaches every request of the batch. Requests whose caller gave up (timeout,
client gone) are dropped before they cost any compute, and so are requests that waited in the queue
longer than `max_queue_wait_s` (they fail with QueueWaitExceeded: under overload an answer that late
is worth less than the compute it takes from the queries behind it).

With `max_batch_ms`, a batch is also cut to the queries its slowest stage does in about that time,
from each stage's running mean of seconds per query. Why: batching shares the encoder's work, but
a first stage that scores every video per query (the projected one) costs the same per query in a
batch of 32 as alone, so a full batch only adds latency: 32 x 48 ms of scoring behind a full queue
answered after clients had given up, and the service computed answers nobody read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

MEAN_WEIGHT = 0.3  # of the latest batch in a stage's running mean of seconds per query

Req = TypeVar("Req")
Res = TypeVar("Res")


class Overloaded(Exception):
    """More work than the service takes: the caller should retry later (HTTP 429)."""


class QueueFull(Overloaded):
    """The queue is at its bound."""


class QueueWaitExceeded(Overloaded):
    """The request waited in the queue longer than the bound and was dropped uncomputed."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new work (HTTP 503)."""


@dataclass
class _Pending(Generic[Req, Res]):
    item: Req
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchInfo:
    size: int
    queue_wait_s: list[float]  # per request, from enqueue to the start of the batch


class Batcher(Generic[Req, Res]):
    def __init__(
        self,
        process: Callable[[Sequence[Req]], Sequence[Res]] | Sequence[Callable[[Any], Any]],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[BatchInfo], None] | None = None,
        max_queue_wait_s: float | None = None,
        max_batch_ms: float | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        if max_queue_wait_s is not None and max_queue_wait_s <= 0:
            raise ValueError("max_queue_wait_s must be above 0 (or None: no bound)")
        if max_batch_ms is not None and max_batch_ms <= 0:
            raise ValueError("max_batch_ms must be above 0 (or None: batches up to max_batch)")
        self.stages: list[Callable[[Any], Any]] = list(process) if isinstance(process, (list, tuple)) else [process]
        if not self.stages:
            raise ValueError("process needs at least one stage")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.max_queue_wait_s = max_queue_wait_s
        self.max_batch_ms = max_batch_ms
        self._per_query_s: list[float | None] = [None] * len(self.stages)  # running mean per stage
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{i}") for i in range(len(self.stages))
        ]
        self._flows: set[asyncio.Task] = set()
        self._closing = False

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def batch_limit(self) -> int:
        """Most queries the next batch takes: max_batch, or fewer where max_batch_ms says so."""
        known = [s for s in self._per_query_s if s is not None]
        if self.max_batch_ms is None or not known:
            return self.max_batch
        return max(1, min(self.max_batch, int(self.max_batch_ms / 1000 / max(known))))

    def _timed(self, i: int, stage: Callable[[Any], Any], value: Any, size: int) -> Any:
        """Runs stage i (in its worker thread) and folds its seconds per query into the running mean."""
        started = time.perf_counter()
        out = stage(value)
        per_query = (time.perf_counter() - started) / max(1, size)
        last = self._per_query_s[i]
        self._per_query_s[i] = per_query if last is None else last + MEAN_WEIGHT * (per_query - last)
        return out

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new work, finish what is queued (within the timeout), then stop the worker."""
        self._closing = True
        if self._queue is not None:
            deadline = time.perf_counter() + drain_timeout_s
            while (self._flows or not self._queue.empty()) and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosed("the service is shutting down"))
        for flow in list(self._flows):
            flow.cancel()
        await asyncio.gather(*self._flows, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def submit(self, item: Req, timeout_s: float | None = None) -> Res:
        """Queue one request and wait for its result; QueueFull at once if the queue is full."""
        (waiter,) = self.submit_many([item], timeout_s)
        return await waiter

    def submit_many(self, items: Sequence[Req], timeout_s: float | None = None) -> list[Coroutine[Any, Any, Res]]:
        """Queues every item or none, at once, and returns one awaitable result per item, in order.

        QueueFull when the queue lacks room for all of them: the queries of one request are
        admitted together, so an overloaded service does not compute part of a request whose other
        part it refuses. Each awaitable must be awaited (or closed): until then its item stays queued."""
        if self._closing or self._queue is None:
            raise BatcherClosed("the service is shutting down")
        room = self.max_queue - self._queue.qsize()
        if len(items) > room:
            held = f"{len(items)} queries" if len(items) > 1 else "1 query"
            raise QueueFull(f"queue is full (room for {room} of {self.max_queue}; this request holds {held})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):  # no await in between: all or none
            self._queue.put_nowait(_Pending(item, future))
        return [self._wait(future, timeout_s) for future in futures]

    async def _wait(self, future: asyncio.Future, timeout_s: float | None) -> Any:
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            if not future.done():
                future.cancel()  # timed out or the caller was cancelled: the worker skips it

    def _keep(self, pending: _Pending) -> bool:
        """False for a request whose caller is gone or that waited too long (which then fails)."""
        if pending.future.done():
            return False
        if self.max_queue_wait_s is not None:
            waited = time.perf_counter() - pending.enqueued
            if waited > self.max_queue_wait_s:
                pending.future.set_exception(
                    QueueWaitExceeded(f"waited {waited:.2f} s for a batch; the bound is {self.max_queue_wait_s:g} s")
                )
                return False
        return True

    async def _collect(self) -> list[_Pending]:
        """The next batch: its first live request, then whatever joins within max_wait_s of it."""
        assert self._queue is not None
        first = await self._queue.get()
        while not self._keep(first):
            first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued + self.max_wait_s
        limit = self.batch_limit
        while len(batch) < limit:
            remaining = deadline - time.perf_counter()
            try:
                if remaining <= 0:
                    pending = self._queue.get_nowait()
                else:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if self._keep(pending):
                batch.append(pending)
        return [p for p in batch if not p.future.done()]  # callers may have left while it filled

    async def _run(self) -> None:
        # locks[i] is held by the batch in stage i; a batch takes locks[i + 1] before it lets go of
        # locks[i], and the next batch is collected only once stage 0 is free.
        locks = [asyncio.Lock() for _ in self.stages]
        while True:
            await locks[0].acquire()
            try:
                batch = await self._collect()
            except BaseException:
                locks[0].release()
                raise
            if not batch:
                locks[0].release()
                continue
            started = time.perf_counter()
            if self.on_batch is not None:
                self.on_batch(BatchInfo(len(batch), [started - p.enqueued for p in batch]))
            flow = asyncio.create_task(self._flow(batch, locks))
            self._flows.add(flow)
            flow.add_done_callback(self._flows.discard)

    async def _flow(self, batch: list[_Pending], locks: list[asyncio.Lock]) -> None:
        """One batch through every stage (it holds locks[0] on entry); resolves its futures."""
        loop = asyncio.get_running_loop()
        value: Any = [p.item for p in batch]
        held = 0
        try:
            for i, stage in enumerate(self.stages):
                value = await loop.run_in_executor(self._executors[i], self._timed, i, stage, value, len(batch))
                if i + 1 < len(self.stages):
                    await locks[i + 1].acquire()
                    locks[i].release()
                    held = i + 1
            if len(value) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(value)} results")
        except asyncio.CancelledError:  # stopping: nobody will resolve these otherwise
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BatcherClosed("the service is shutting down"))
            raise
        except Exception as exc:  # every waiter hears of it
            log.exception("batch of %d failed", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            locks[held].release()
        for p, result in zip(batch, value, strict=True):
            if not p.future.done():
                p.future.set_result(result)
