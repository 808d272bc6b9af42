"""Batch inference of a classifier: ``maas batch`` (Ray Data, one actor per spare CPU, answers and rejects
written as Parquet) against the ceiling of the same predictor on the same rows in one process (the rows read
with pandas, answered in chunks of the same size, labels and probabilities written as one Parquet file), same
run, same machine.

The model is an MLP over the 64 digits pixels (random weights: the speed does not depend on them), exported
to ONNX and quantized to int8 as the digits pipeline does; the rows are scikit-learn's digits repeated to
``--rows``. maas's time is reported whole (from the call to the checked result, the actors' start included)
and after its first block (the steady state a large batch runs at).

    python benchmarks/batch_oip.py [--rows 400000] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(work: Path, rows: int) -> tuple[str, Path]:
    import pandas as pd
    import torch

    from maas.compress import compress_model
    from maas.data.source import bootstrap_sklearn
    from maas.models import build_model, classifier_signature
    from maas.models.artifacts import export_onnx
    from maas.registry import Registry

    bootstrap_sklearn("sklearn:digits", str(work / "digits.parquet"))
    frame = pd.read_parquet(work / "digits.parquet").drop(columns=["target"])
    features = list(frame.columns)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [128, 64],
                         "dropout": 0.0})
    (variant,) = compress_model(["int8_dynamic"], export_onnx(model, 64, work / "model.onnx"), work)
    store = str(work / "store")
    mv = Registry(store).publish("digits", variant.files, runtime="onnxruntime",
                                 signature=classifier_signature(64, list(range(10)), features=features))
    Registry(store).set_alias("digits", "production", mv.version)
    big = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).head(rows)
    big.insert(0, "id", range(rows))
    big.to_parquet(work / "rows.parquet")
    return store, work / "rows.parquet"


def in_process(store: str, rows: Path, out: Path, batch_size: int) -> float:
    import numpy as np
    import pandas as pd

    from maas.models import load_predictor
    from maas.registry import Registry
    from maas.serve.protocols.oip.codec import softmax

    t0 = time.perf_counter()
    folder, mv = Registry(store).fetch("digits@production")
    predictor = load_predictor(folder, mv.runtime, mv.task)
    frame = pd.read_parquet(rows)
    x = frame[mv.signature["features"]].to_numpy(np.float32)
    logits = np.concatenate([predictor(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    probs = softmax(logits)
    pd.DataFrame({"id": frame["id"], "label": logits.argmax(axis=1), "probabilities": list(probs)}).to_parquet(out)
    return time.perf_counter() - t0


def with_maas(store: str, rows: Path, out: Path, batch_size: int) -> tuple[float, float, int]:
    from maas.batch import run_batch

    marks = []
    t0 = time.perf_counter()
    result = run_batch(store, "digits@production", str(rows), str(out), batch_size=batch_size,
                       progress=lambda line: marks.append((time.perf_counter(), line)))
    total = time.perf_counter() - t0
    first_t, first_line = marks[0]
    first_rows = int(first_line.split("/")[0])
    steady = (result.rows - first_rows) / max(t0 + total - first_t, 1e-9)
    return total, steady, result.answered


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--batch-size", type=int, default=4096)
    args = p.parse_args()
    import ray

    from maas.runtime import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="maas-batch-bench-"))
    store, rows = make_inputs(work, args.rows)
    plain = in_process(store, rows, work / "plain.parquet", args.batch_size)
    ensure_ray()
    try:
        total, steady, answered = with_maas(store, rows, work / "out", args.batch_size)
    finally:
        ray.shutdown()
    assert answered == args.rows
    print(f"\n{args.rows:,} rows, blocks of {args.batch_size}")
    print("| system | seconds | rows/s | rows/s after the first block |")
    print("|---|---|---|---|")
    print(f"| in-process loop (pandas + the predictor) | {plain:.1f} | {args.rows / plain:,.0f} | - |")
    print(f"| maas batch (Ray Data, verified files, rejects, resumable) | {total:.1f} | {args.rows / total:,.0f} | "
          f"{steady:,.0f} |")
    print(f"\nmaas / in-process rows/s: {plain / total:.2f} whole, steady state {steady / (args.rows / plain):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
