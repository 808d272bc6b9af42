"""Dynamic batching that forms a batch when the model is free, not when a timer says so.

Ray's ``@serve.batch`` forms each batch as soon as its wait ends and queues the formed batch for the model
(``max_concurrent_batches``): with a greedy wait of 0 and a forward in flight, every request became a batch
of its own waiting its turn (measured in a replica, 32 clients, a 4 ms forward: batches of 1-5 requests
with 28-32 requests in the replica, each waiting ~118 ms in Serve's batch queue). ``Batcher`` keeps the
requests themselves queued while a forward runs; when the model is free, the next forward takes every request
waiting (up to ``max_batch_size``), so a batch is as large as the load that queued behind the last one.
``wait_s`` > 0 also holds an idle model back that long for a batch to fill (or until it is full).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable


class Batcher:
    """``await batcher.submit(item)`` -> ``fn(items)[i]`` for this item; ``fn`` is an async function taking a
    list of items and returning one result per item. Batches run one at a time, in a task of their own (a
    client that goes away cancels its wait, never a forward other requests share)."""

    def __init__(self, fn: Callable[[list], Awaitable[list]], max_batch_size: int = 32, wait_s: float = 0.0):
        self.fn = fn
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self.pending: deque = deque()  # (item, future)
        self.full = asyncio.Event()  # set when max_batch_size requests wait (ends a wait_s early)
        self.worker = None

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.max_batch_size:
            self.full.set()
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self.pending:
            if self.wait_s and len(self.pending) < self.max_batch_size:
                self.full.clear()
                try:
                    await asyncio.wait_for(self.full.wait(), self.wait_s)
                except asyncio.TimeoutError:
                    pass
            batch = [self.pending.popleft() for _ in range(min(len(self.pending), self.max_batch_size))]
            batch = [(item, future) for item, future in batch if not future.done()]  # cancelled: gone
            if not batch:
                continue
            try:
                results = await self.fn([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
            except Exception as exc:  # every request of the batch gets the error, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
