"""maas training vs a plain PyTorch loop: same model, same data, same run, equal worker counts.

    python benchmarks/train_overhead.py [--repeat 40] [--epochs 4] [--hidden 512,512] [--batch-size 256]

Baselines: a plain single-process loop (1 worker) and plain ``torch.distributed`` DDP over gloo in 2
processes started with ``torch.multiprocessing`` (2 workers), each worker pinned to 1 thread as Ray Train
pins its workers (OMP_NUM_THREADS = CPUs per worker). maas: the train stage (Ray Train, DDP, validation each
epoch, checkpoints as configured) with 1 and 2 workers. Throughput is the median epoch's training samples/s
after the first epoch (warm-up); wall time includes startup (process spawn / Ray Train worker group).
Anchor: Ray's own benchmarks put Ray Train within 2.5% of native PyTorch DDP. Goal: maas within 10%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _plain_worker(rank: int, world: int, x: np.ndarray, y: np.ndarray, hidden: list, epochs: int, batch: int,
                  port: int, out) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from maas.models import build_model

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "input_dim": x.shape[1], "num_classes": 10, "hidden_sizes": hidden,
                         "dropout": 0.1, "mean": x.mean(0).tolist(), "std": (x.std(0) + 1e-6).tolist()})
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    shard = np.arange(rank, len(y), world)
    rates = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch * 101 + rank).permutation(shard)
        t0 = time.perf_counter()
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(len(order) * world / (time.perf_counter() - t0))
    if rank == 0:
        out.put(rates)
    if world > 1:
        dist.destroy_process_group()


def plain(world: int, x, y, hidden, epochs, batch) -> tuple[list, float]:
    import torch.multiprocessing as mp

    from maas.runtime import free_port

    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_plain_worker, args=(r, world, x, y, hidden, epochs, batch, port, q))
             for r in range(world)]
    for p in procs:
        p.start()
    rates = q.get()
    for p in procs:
        p.join()
    return rates, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", default="512,512")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]

    from gpu_train import make_data

    from maas.data import prepare_data
    from maas.runtime import ensure_ray
    from maas.spec import spec_from_dict
    from maas.train import train_model

    ensure_ray(None, quiet=True)
    tmp = Path(tempfile.mkdtemp(prefix="maas-overhead-"))
    make_data(tmp / "digits.parquet", args.repeat)
    base = {"store": str(tmp / "store"), "data": {"path": str(tmp / "digits.parquet"), "label": "target"},
            "model": {"name": "digits", "hidden_sizes": hidden, "dropout": 0.1}}
    data = prepare_data(spec_from_dict({**base, "train": {}}).data, str(tmp / "run"))
    x, y = data.numpy("train")
    rows = []
    for world in (1, 2):
        rates, wall = plain(world, x, y, hidden, args.epochs, args.batch_size)
        spec = spec_from_dict({**base, "train": {"num_workers": world, "epochs": args.epochs, "device": "cpu",
                                                 "batch_size": args.batch_size, "learning_rate": 1e-3,
                                                 "cpus_per_worker": 1, "checkpoint_every_epochs": 0}})
        t0 = time.perf_counter()
        result = train_model(spec, data, str(tmp / f"run-{world}"))
        maas_wall = time.perf_counter() - t0
        plain_sps = statistics.median(rates[1:] or rates)
        maas_sps = statistics.median([h["samples_per_s"] for h in result.history[1:]] or
                                     [result.history[0]["samples_per_s"]])
        rows.append((world, plain_sps, maas_sps, 100 * (plain_sps - maas_sps) / plain_sps, wall, maas_wall))

    print(f"\nMLP 64-{'-'.join(map(str, hidden))}-10, {len(y):,} train rows, batch {args.batch_size} per worker, "
          f"{args.epochs} epochs, 1 thread per worker, {os.cpu_count()} CPU(s)\n")
    print("| workers | plain PyTorch samples/s | maas (Ray Train) samples/s | maas overhead | plain wall s | "
          "maas wall s |")
    print("|---|---|---|---|---|---|")
    for world, p, m, over, w1, w2 in rows:
        print(f"| {world} | {p:,.0f} | {m:,.0f} | {over:+.1f}% | {w1:.1f} | {w2:.1f} |")
    print("\nmaas epochs also validate on the val split and checkpoint when validation improves; the samples/s "
          "above time the training pass only, as the plain loop's do.")


if __name__ == "__main__":
    main()
