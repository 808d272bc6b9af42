"""Measuring a model variant: quality on held-out data, artifact size, latency and throughput."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
             batch_size: int = 1024) -> float:
    preds = np.concatenate([predict(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float((preds == y).mean())


def latency(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int = 200,
            batch_size: int = 64) -> dict:
    """p50/p99 of single-row calls, and rows/s at ``batch_size`` (after a warm-up)."""
    texts = isinstance(x, list)  # a text model takes a list of strings
    rows = [[x[i % len(x)]] if texts else x[i % len(x)][None, :] for i in range(runs)]
    for r in rows[:10]:
        predict(r)
    times = []
    for r in rows:
        t0 = time.perf_counter()
        predict(r)
        times.append(time.perf_counter() - t0)
    batch = [x[i % len(x)] for i in range(batch_size)] if texts else \
        np.resize(x, (batch_size, x.shape[1])).astype(np.float32)
    predict(batch)
    n_batches = max(runs // 4, 10)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        predict(batch)
    elapsed = time.perf_counter() - t0
    ms = np.array(times) * 1e3
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p99": float(np.percentile(ms, 99)),
            f"throughput_rows_s_b{batch_size}": float(n_batches * batch_size / elapsed)}


def evaluate_classifier(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, size_bytes: int,
             runs: int = 200) -> dict:
    """All figures for one variant, as stored in the registry's metrics."""
    return {"test_accuracy": accuracy(predict, x, y), "size_bytes": int(size_bytes), **latency(predict, x, runs)}
