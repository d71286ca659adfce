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


class Gated:
    """A process that holds each batch until `gate` is set, and records what it computed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.seen: list[int] = []

    def __call__(self, items):
        self.gate.wait(5)
        self.seen.extend(items)
        return items

    async def holding_first(self, max_queue: int) -> tuple[Batcher, asyncio.Future]:
        """A started batcher (batches of 1) whose worker holds request 0, its queue empty again."""
        b = Batcher(self, max_batch=1, max_wait_s=0, max_queue=max_queue)
        await b.start()
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.05)
        return b, first


def test_a_full_queue_refuses_at_once():
    blocked = Gated()

    async def main():
        b, first = await blocked.holding_first(max_queue=2)
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit(3)
        blocked.gate.set()
        out = await asyncio.gather(first, *queued)
        await b.stop()
        return out

    assert run(main()) == [0, 1, 2]


def test_a_requests_queries_are_queued_all_together_or_refused_all_together():
    blocked = Gated()

    async def main():
        b, first = await blocked.holding_first(max_queue=4)
        two = [asyncio.ensure_future(w) for w in b.submit_many([1, 2])]
        assert b.depth == 2
        with pytest.raises(QueueFull, match="room for 2 of 4; this request holds 3 queries"):
            b.submit_many([3, 4, 5])
        assert b.depth == 2  # none of the refused request was queued
        last = [asyncio.ensure_future(w) for w in b.submit_many([6, 7])]  # exactly the room left
        blocked.gate.set()
        out = await asyncio.gather(first, *two, *last)
        await b.stop()
        return out

    assert run(main()) == [0, 1, 2, 6, 7]
    assert sorted(blocked.seen) == [0, 1, 2, 6, 7]  # 3, 4 and 5 were never computed


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


def test_two_stages_run_side_by_side_one_batch_each_and_answers_stay_with_their_requests():
    """Stage two of one batch overlaps stage one of the next (different threads), but never two
    batches in the same stage, and every request gets the answer computed from its own item."""
    active = {0: 0, 1: 0}
    most = {0: 0, 1: 0}
    overlap = []
    lock = threading.Lock()

    def stage(i, fn):
        def run_stage(value):
            with lock:
                active[i] += 1
                most[i] = max(most[i], active[i])
                overlap.append(active[0] > 0 and active[1] > 0)
            time.sleep(0.03)
            with lock:
                active[i] -= 1
            return fn(value)

        return run_stage

    encode = stage(0, lambda items: [(x, x * 10) for x in items])
    score = stage(1, lambda pairs: [a + b for a, b in pairs])

    async def main():
        b = Batcher([encode, score], max_batch=4, max_wait_s=0.005)
        await b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(32)))
        await b.stop()
        return results

    assert run(main()) == [11 * i for i in range(32)]
    assert most == {0: 1, 1: 1}  # one batch per stage at a time
    assert any(overlap)  # and the stages did overlap


def test_an_error_in_the_second_stage_reaches_that_batch_only():
    def score(items):
        if 13 in items:
            raise ValueError("unlucky")
        return items

    async def main():
        b = Batcher([lambda xs: xs, score], max_batch=1, max_wait_s=0.0)
        await b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(12, 15)), return_exceptions=True)
        await b.stop()
        return results

    ok, bad, ok2 = run(main())
    assert (ok, ok2) == (12, 14)
    assert isinstance(bad, ValueError) and "unlucky" in str(bad)


def test_stop_finishes_a_batch_already_between_stages():
    async def main():
        b = Batcher([lambda xs: (time.sleep(0.05), xs)[1], lambda xs: (time.sleep(0.05), xs)[1]], max_wait_s=0.0)
        await b.start()
        pending = asyncio.ensure_future(b.submit(7))
        await asyncio.sleep(0.07)  # in stage two now
        await b.stop()
        return await pending

    assert run(main()) == 7


def test_batches_are_cut_to_what_the_slowest_stage_does_in_max_batch_ms():
    """A stage costing 20 ms per query and a budget of 70 ms: once a batch has been through it, the
    next ones hold at most 3 queries (without the budget the same load forms batches of 16). The
    second batch is collected while the first is still in the slow stage, before any estimate."""

    def sizes_under(budget_ms: float | None) -> tuple[list[int], int]:
        sizes: list[int] = []

        def per_query(items):
            time.sleep(0.02 * len(items))
            return items

        async def main() -> int:
            b = Batcher(
                [lambda xs: xs, per_query],
                max_batch=16,
                max_wait_s=0,
                on_batch=lambda info: sizes.append(info.size),
                max_batch_ms=budget_ms,
            )
            await b.start()
            results = await asyncio.gather(*(b.submit(i) for i in range(40)))
            assert results == list(range(40))
            limit = b.batch_limit
            await b.stop()
            return limit

        return sizes, run(main())

    cut, limit = sizes_under(70.0)
    assert limit == 3 and cut[0] == 16 and max(cut[2:]) <= 3 and sum(cut) == 40
    whole, limit = sizes_under(None)
    assert limit == 16 and max(whole) == 16


def test_max_batch_ms_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_ms"):
        Batcher(lambda xs: xs, max_batch_ms=0)
