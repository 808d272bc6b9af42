"""Measuring a model variant: quality on held-out data, artifact size, latency and throughput."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
             batch_size: int = 1024) -> float:
    preds = np.concatenate([predict(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float((preds == y).mean())


WINDOWS = 5           # rows/s is measured this many times; the median is the figure, min and max its spread
WINDOW_MIN_S = 0.02   # each window runs at least this long (a tiny model's batch takes tens of microseconds)


def latency(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int = 200,
            batch_size: int = 64) -> dict:
    """p50/p99 of single-row calls, and rows/s at ``batch_size`` (after a warm-up) in ``WINDOWS`` windows:
    ``throughput_rows_s_b{N}`` is their median, ``..._min`` and ``..._max`` their spread (what a comparison of
    two versions must exceed before one counts as faster: ``pipelines.base.select``)."""
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
    per_window = max(runs // (4 * WINDOWS), 2)
    rates = np.array([_rows_per_s(predict, batch, batch_size, per_window) for _ in range(WINDOWS)])
    ms = np.array(times) * 1e3
    key = f"throughput_rows_s_b{batch_size}"
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p99": float(np.percentile(ms, 99)),
            key: float(np.median(rates)), f"{key}_min": float(rates.min()), f"{key}_max": float(rates.max())}


def _rows_per_s(predict: Callable, batch, batch_size: int, at_least: int) -> float:
    """Rows/s over one window: ``at_least`` batches, and more until ``WINDOW_MIN_S`` has passed."""
    n, t0 = 0, time.perf_counter()
    while n < at_least or time.perf_counter() - t0 < WINDOW_MIN_S:
        predict(batch)
        n += 1
    return n * batch_size / (time.perf_counter() - t0)


def evaluate_classifier(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, size_bytes: int,
             runs: int = 200) -> dict:
    """All figures for one variant, as stored in the registry's metrics."""
    return {"test_accuracy": accuracy(predict, x, y), "size_bytes": int(size_bytes), **latency(predict, x, runs)}
