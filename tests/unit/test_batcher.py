"""maas.serve.batcher: a batch forms when the model is free and takes every request that queued behind the
last one; errors reach every request of their batch; a client that goes away never cancels a shared forward."""

import asyncio

import pytest

from maas.serve.batcher import Batcher


def model(batches: list, seconds: float = 0.02, fail_on=None):
    async def fn(items):
        batches.append(list(items))
        await asyncio.sleep(seconds)  # a forward in the model thread: the loop keeps taking requests
        if fail_on is not None and fail_on in items:
            raise ValueError(f"bad item {fail_on}")
        return [i * 10 for i in items]
    return fn


def test_requests_that_queue_during_a_forward_share_the_next_one():
    batches = []

    async def go():
        b = Batcher(model(batches), max_batch_size=32)
        return await asyncio.gather(*(b.submit(i) for i in range(20)))

    assert asyncio.run(go()) == [i * 10 for i in range(20)]
    assert batches[0] == [0] or len(batches[0]) == 20  # the first forward starts with what is there
    assert len(batches) <= 2 and sum(map(len, batches)) == 20


def test_staggered_arrivals_batch_by_what_queued_meanwhile_and_respect_the_cap():
    batches = []

    async def go():
        b = Batcher(model(batches, 0.03), max_batch_size=4)
        tasks = []
        for i in range(10):
            tasks.append(asyncio.ensure_future(b.submit(i)))
            await asyncio.sleep(0.005)
        return await asyncio.gather(*tasks)

    assert asyncio.run(go()) == [i * 10 for i in range(10)]
    assert batches[0] == [0] and max(map(len, batches)) <= 4 and len(batches) < 10
    assert [i for batch in batches for i in batch] == list(range(10))  # first come, first served


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    batches = []

    async def go():
        b = Batcher(model(batches, fail_on=3), max_batch_size=8)
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3)]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        return results, await b.submit(5)

    results, later = asyncio.run(go())
    assert results[0] == 0 and all(isinstance(r, ValueError) for r in results[1:]) and later == 50


def test_a_cancelled_request_leaves_the_shared_forward_alone():
    batches = []

    async def go():
        b = Batcher(model(batches, 0.05), max_batch_size=8)
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)  # its forward is running
        queued = [asyncio.ensure_future(b.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        first.cancel()
        queued[0].cancel()  # gone before its batch forms: not computed
        return await asyncio.gather(*queued, return_exceptions=True)

    results = asyncio.run(go())
    assert isinstance(results[0], asyncio.CancelledError) and results[1] == 30
    assert batches == [[1], [3]]


def test_a_wait_holds_an_idle_model_for_a_batch_to_fill_or_until_full():
    batches = []

    async def go(wait, n):
        b = Batcher(model(batches, 0.0), max_batch_size=4, wait_s=wait)
        tasks = []
        for i in range(n):
            tasks.append(asyncio.ensure_future(b.submit(i)))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    asyncio.run(go(0.05, 3))
    assert batches == [[0, 1, 2]]
    batches.clear()
    asyncio.run(go(5.0, 4))  # full before the wait ends: runs at once
    assert batches == [[0, 1, 2, 3]]


def test_a_function_that_loses_results_is_an_error_not_a_hang():
    async def short(items):
        return items[:-1]

    async def go():
        b = Batcher(short, max_batch_size=4)
        return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))


@pytest.mark.parametrize("size", [0, -3])
def test_a_batch_size_under_one_means_one(size):
    assert Batcher(model([]), max_batch_size=size).max_batch_size == 1
