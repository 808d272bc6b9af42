"""Measuring a sentence-encoder variant against its parent: quality, size, speed and memory.

Quality, on held-out sentences the variant never trained on:
- ``cosine_mean`` / ``cosine_min``: cosine similarity of each sentence's embedding to the parent's.
- ``sts_spearman``: an STS-style rank correlation on a labelled pair set built from the same shipped text
  (``sts_pairs``): each sentence is paired with copies losing 0, 20, 40 or 60% of their words (labels 4..1)
  and with an unrelated sentence (label 0). It is synthetic, not STS-B, but it is labelled, reproducible and
  sensitive to what compression breaks: whether similarity still ranks pairs the way the parent does.

Speed and memory are measured in a fresh process per variant (``measure_in_subprocess``), so one variant's
allocations, thread pools and JIT caches do not colour the next one's figures:
- ``latency_ms_p50`` / ``latency_ms_p99``: one sentence per call (tokenization included, as in serving).
- ``throughput_b{N}``: sentences per second in batches of N.
- ``peak_memory_mb``: the process's peak resident memory while loading and running the variant, above what
  it held after importing the runtimes.
- ``batch_variance``: the largest change of a text's vector between encoded alone and batched with others
  (``batch_variance``); retrieval caches and deduplication need the same vector for the same text.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

DROPS = (0.0, 0.2, 0.4, 0.6)  # word-drop fractions for labels 4, 3, 2, 1; an unrelated sentence is 0


def sts_pairs(sentences: Sequence[str], seed: int = 0, max_pairs: int = 1000) -> tuple[list, list, np.ndarray]:
    """(left texts, right texts, graded labels 0..4) built from ``sentences`` with a seeded RNG."""
    rng = random.Random(seed)
    left, right, labels = [], [], []
    pool = list(sentences)
    for i, sent in enumerate(pool):
        words = sent.split()
        for grade, drop in zip((4, 3, 2, 1), DROPS):
            if drop == 0:
                variant = sent.lower().rstrip(".!?")  # same words, different surface form
            else:
                kept = [w for w in words if rng.random() >= drop] or words[:1]
                variant = " ".join(kept)
            left.append(sent), right.append(variant), labels.append(grade)
        other = pool[(i + 1 + rng.randrange(len(pool) - 1)) % len(pool)] if len(pool) > 1 else sent
        left.append(sent), right.append(other), labels.append(0)
        if len(labels) >= max_pairs:
            break
    return left, right, np.array(labels, dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def quality(parent_emb: np.ndarray, emb: np.ndarray, pair_emb: tuple[np.ndarray, np.ndarray],
            labels: np.ndarray) -> dict:
    cos = (parent_emb * emb).sum(1) / (np.linalg.norm(parent_emb, axis=1) * np.linalg.norm(emb, axis=1) + 1e-12)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "sts_spearman": sts_spearman(*pair_emb, labels)}


def sts_spearman(left: np.ndarray, right: np.ndarray, labels: np.ndarray) -> float:
    """The rank correlation of the pairs' cosine similarities with their graded labels."""
    sims = (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1) + 1e-12)
    return spearman(sims, labels)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise OSError(field)


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) and return the resident MB now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak (over-counts the imports' transient peak)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def batch_variance(predictor, texts: list[str], batched: np.ndarray, probes: int = 16) -> float:
    """How far a text's vector moves with its company: the largest absolute difference between the first
    ``probes`` texts encoded alone and the same texts in ``batched`` (batches of 64, padded to their longest)
    or in a batch of the others in reverse order (other neighbours, other padding)."""
    probe = texts[:probes]
    alone = np.stack([predictor([t])[0] for t in probe])
    mixed = predictor(list(reversed(texts[:3 * len(probe)])))[::-1][:len(probe)]
    return float(max(np.abs(alone - batched[:len(probe)]).max(), np.abs(alone - mixed).max()))


def measure(folder: str, runtime: str, texts: list[str], batch_sizes: Sequence[int] = (1, 64),
            latency_runs: int = 64, threads: int = 0) -> tuple[dict, np.ndarray]:
    """Load the variant in ``folder`` and time it; returns (metrics, embeddings of ``texts``)."""
    import onnxruntime  # noqa: F401  (imported before the baseline, like torch, so it is not counted)
    import torch

    from maas.models.predictor import EncoderPredictor

    if threads:
        torch.set_num_threads(threads)
    base = _reset_peak()
    started = time.perf_counter()
    predictor = EncoderPredictor(folder, runtime, threads=threads)
    metrics: dict = {"load_seconds": time.perf_counter() - started}
    emb = np.concatenate([predictor(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    metrics["batch_variance"] = batch_variance(predictor, texts, emb)
    for bs in batch_sizes:
        if bs == 1:
            for t in texts[:5]:
                predictor([t])
            times = []
            for t in (texts * (latency_runs // max(len(texts), 1) + 1))[:latency_runs]:
                t0 = time.perf_counter()
                predictor([t])
                times.append(time.perf_counter() - t0)
            ms = np.array(times) * 1e3
            metrics.update(latency_ms_p50=float(np.percentile(ms, 50)), latency_ms_p99=float(np.percentile(ms, 99)),
                           throughput_b1=float(1000.0 / ms.mean()))
        else:
            batches = [texts[i:i + bs] for i in range(0, len(texts) - bs + 1, bs)] or [texts[:bs]]
            predictor(batches[0])
            rates = np.array([_texts_per_s(predictor, batches, bs) for _ in range(5)])  # 5 windows of 0.2 s
            key = f"throughput_b{bs}"  # the median; min and max: the spread a faster version must clear
            metrics.update({key: float(np.median(rates)), f"{key}_min": float(rates.min()),
                            f"{key}_max": float(rates.max())})
    metrics["peak_memory_mb"] = max(0.0, _peak_rss_mb() - base)
    return metrics, emb


def _texts_per_s(predictor, batches: list, bs: int, window_s: float = 0.2) -> float:
    """Texts per second over one window: passes over ``batches`` until ``window_s`` and two batches are done."""
    t0, n = time.perf_counter(), 0
    while True:
        for b in batches:
            predictor(b)
            n += len(b)
            if time.perf_counter() - t0 > window_s and n >= 2 * bs:
                return n / (time.perf_counter() - t0)


def measure_in_subprocess(folder: str | Path, runtime: str, texts: list[str], batch_sizes=(1, 64),
                          latency_runs: int = 64, threads: int = 0, timeout_s: float = 900) -> tuple[dict, np.ndarray]:
    """``measure`` in a fresh Python process; raises CompressionError with its stderr when it fails."""
    from maas.exceptions import CompressionError

    with tempfile.TemporaryDirectory(prefix="maas-measure-") as tmp:
        request = {"folder": str(folder), "runtime": runtime, "texts": list(texts), "batch_sizes": list(batch_sizes),
                   "latency_runs": latency_runs, "threads": threads, "out": str(Path(tmp) / "emb.npy")}
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-m", "maas.compress.encoder_eval", str(Path(tmp) / "request.json")],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
        if proc.returncode != 0:
            raise CompressionError(f"measuring {folder} ({runtime}) failed: {proc.stderr.strip()[-1500:]}")
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
        return metrics, np.load(request["out"])


def _main(request_path: str) -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    req = json.loads(Path(request_path).read_text())
    metrics, emb = measure(req["folder"], req["runtime"], req["texts"], req["batch_sizes"], req["latency_runs"],
                           req["threads"])
    np.save(req["out"], emb)
    print(json.dumps(metrics))


if __name__ == "__main__":
    _main(sys.argv[1])
