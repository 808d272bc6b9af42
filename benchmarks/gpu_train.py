"""The train stage under Ray Train on whatever the machine has: CPU fp32 vs GPU fp32 vs GPU bf16, same run.

The same spec and code; only `train.device` and `train.precision` change. Digits rows are repeated
(`--repeat`, with small pixel noise) so that an epoch is long enough to measure throughput.

    python benchmarks/gpu_train.py [--repeat 100] [--epochs 5] [--hidden 1024,1024]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(path: Path, repeat: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    rng = np.random.default_rng(0)
    parts = []
    for i in range(repeat):
        f = frame.copy()
        if i:
            cols = [c for c in f.columns if c != "target"]
            f[cols] = np.clip(f[cols].to_numpy() + rng.normal(0, 0.5, size=(len(f), len(cols))), 0, 16)
        parts.append(f)
    pq.write_table(pa.Table.from_pandas(__import__("pandas").concat(parts), preserve_index=False), path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()

    import ray
    import torch

    from maas.data import prepare_data
    from maas.runtime import ensure_ray
    from maas.spec import spec_from_dict
    from maas.train import train_model

    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    tmp = Path(tempfile.mkdtemp(prefix="maas-gpu-"))
    make_data(tmp / "digits.parquet", args.repeat)
    configs = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if gpus else [])
    rows = []
    data = None
    for device, precision in configs:
        spec = spec_from_dict({
            "store": str(tmp / "store"),
            "data": {"path": str(tmp / "digits.parquet"), "label": "target"},
            "model": {"name": "digits", "hidden_sizes": [int(h) for h in args.hidden.split(",")], "dropout": 0.1},
            "train": {"num_workers": 1, "device": device, "precision": precision, "epochs": args.epochs,
                      "batch_size": args.batch_size, "learning_rate": 1e-3, "cpus_per_worker": 1},
        })
        if data is None:
            data = prepare_data(spec.data, str(tmp / "run"))
        t0 = time.perf_counter()
        result = train_model(spec, data, str(tmp / f"run-{device}-{precision}"))
        wall = time.perf_counter() - t0
        x, y = data.numpy("test")
        with torch.no_grad():
            acc = float((result.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
        steady = [h["samples_per_s"] for h in result.history[1:]] or [result.history[0]["samples_per_s"]]
        rows.append((device, precision, result.device, statistics.median(steady), acc, wall))

    name = torch.cuda.get_device_name(0) if gpus else "no GPU"
    print(f"\nmaas train stage under Ray Train, 1 worker, {data.counts['splits']['train']:,} train rows, "
          f"MLP 64-{args.hidden.replace(',', '-')}-10, batch {args.batch_size}, {args.epochs} epochs; GPU: {name}\n")
    print(f"{'device':<7} {'precision':<9} {'ran on':<7} {'samples/s (median epoch)':>25} {'test acc':>9} "
          f"{'wall s':>7}")
    for device, precision, ran, sps, acc, wall in rows:
        print(f"{device:<7} {precision:<9} {ran:<7} {sps:>25,.0f} {acc:>9.4f} {wall:>7.1f}")


if __name__ == "__main__":
    main()
