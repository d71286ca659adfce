from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher, BatcherClosed, BatchInfo, QueueFull


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_form_batches_and_each_gets_its_own_answer():
    sizes: list[int] = []

    def square(items):
        time.sleep(0.02)  # compute time during which more requests queue up
        return [x * x for x in items]

    async def main():
        b = Batcher(square, max_batch=8, max_wait_s=0.01, on_batch=lambda info: sizes.append(info.size))
        await b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(40)))
        await b.stop()
        return results

    assert run(main()) == [i * i for i in range(40)]
    assert sum(sizes) == 40 and max(sizes) == 8 and len(sizes) <= 10


def test_a_lone_request_is_flushed_after_the_wait():
    infos: list[BatchInfo] = []

    async def main():
        b = Batcher(lambda xs: xs, max_batch=64, max_wait_s=0.05, on_batch=infos.append)
        await b.start()
        start = time.perf_counter()
        assert await b.submit("a") == "a"
        waited = time.perf_counter() - start
        await b.stop()
        return waited

    waited = run(main())
    assert infos[0].size == 1 and waited >= 0.04


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()

    def blocked(items):
        gate.wait(5)
        return items

    async def main():
        b = Batcher(blocked, max_batch=1, max_wait_s=0, max_queue=2)
        await b.start()
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.05)  # the worker holds request 0, the queue is empty again
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit(3)
        gate.set()
        out = await asyncio.gather(first, *queued)
        await b.stop()
        return out

    assert run(main()) == [0, 1, 2]


def test_an_error_reaches_every_waiter_of_the_batch():
    def boom(items):
        raise ValueError("model exploded")

    async def main():
        b = Batcher(boom, max_batch=4, max_wait_s=0.02)
        await b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
        await b.stop()
        return results

    results = run(main())
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)


def test_timed_out_requests_are_dropped_before_compute():
    seen: list[int] = []
    gate = threading.Event()

    def record(items):
        gate.wait(5)
        seen.extend(items)
        return items

    async def main():
        b = Batcher(record, max_batch=1, max_wait_s=0)
        await b.start()
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await b.submit(1, timeout_s=0.05)  # gives up while request 0 computes
        gate.set()
        assert await first == 0
        assert await b.submit(2) == 2
        await b.stop()

    run(main())
    assert seen == [0, 2]


def test_after_stop_new_work_is_refused():
    async def main():
        b = Batcher(lambda xs: xs)
        await b.start()
        await b.stop()
        with pytest.raises(BatcherClosed):
            await b.submit(1)

    run(main())
