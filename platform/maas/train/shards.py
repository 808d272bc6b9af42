"""Small splits reach the training workers as objects cut on the driver, not through Ray Data's streaming split.

A split whose per-worker shard is under ``train.cache_shard_mb`` is read once and cached by each worker anyway.
Handing it over through ``TorchTrainer(datasets=...)`` costs a run a DatasetManager actor, one SplitCoordinator
actor per split and split tasks, each a new worker process that imports Ray Data: 10 of the 37 s of a 2-epoch
digits run on a 2-core machine, every run (docs/design/training.md). Here the driver, which has just
materialised the split, converts it to numpy once (Ray Data's own batch conversion, so a worker sees what
``iter_batches(batch_format="numpy")`` would give it), cuts it into equal contiguous parts (at most
``workers - 1`` rows dropped, as Ray Train's equal split drops them: DDP needs every worker to take the same
number of steps) and puts one object per worker. A restarted worker group gets the same parts."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def driver_shards(dataset, workers: int) -> list:
    """One object ref per worker: a dict of numpy columns, each worker's equal part of ``dataset``."""
    import pyarrow as pa
    import ray
    from ray.data.block import BlockAccessor

    tables = [t for t in ray.get(dataset.to_arrow_refs()) if t.num_rows]
    if not tables:
        return [ray.put({}) for _ in range(workers)]
    batch = BlockAccessor.for_block(pa.concat_tables(tables)).to_batch_format("numpy")
    size = len(next(iter(batch.values()))) // workers
    return [ray.put({name: np.ascontiguousarray(column[rank * size:(rank + 1) * size])
                     for name, column in batch.items()}) for rank in range(workers)]


class DriverShard:
    """A worker's part from ``driver_shards``, read like the Ray Data shard it replaces (one batch)."""

    def __init__(self, ref):
        self.ref = ref

    def iter_batches(self, batch_size: int, batch_format: str = "numpy", local_shuffle_seed=None,
                     **_) -> Iterator[dict]:
        """Batches in order or, given ``local_shuffle_seed``, in a permutation of the whole part drawn from it
        (a stronger shuffle than a streaming split's local buffer)."""
        import ray

        assert batch_format == "numpy", batch_format
        batch = ray.get(self.ref)
        rows = len(next(iter(batch.values()))) if batch else 0
        order = None if local_shuffle_seed is None else np.random.default_rng(local_shuffle_seed).permutation(rows)
        for start in range(0, rows, batch_size):
            pick = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            yield {name: column[pick] for name, column in batch.items()}
