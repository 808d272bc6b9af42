"""maas training vs a plain PyTorch loop: same model, same data, same run, equal worker counts.

    python benchmarks/train_overhead.py [--repeat 40] [--epochs 4] [--hidden 512,512] [--batch-size 256]
    python benchmarks/train_overhead.py --model llm [--size tiny] [--sentences 20000] [--epochs 3]

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


def _plain_worker(rank: int, world: int, x: np.ndarray, y: np.ndarray, config: dict, epochs: int, batch: int,
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
    model = build_model(config)
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
            answer = model(xb)
            logits = getattr(answer, "logits", answer)  # transformers' causal LMs answer an output object
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(len(order) * world / (time.perf_counter() - t0))
    if rank == 0:
        out.put(rates)
    if world > 1:
        dist.destroy_process_group()


def plain(world: int, x, y, config, epochs, batch) -> tuple[list, float]:
    import torch.multiprocessing as mp

    from maas.runtime import free_port

    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_plain_worker, args=(r, world, x, y, config, epochs, batch, port, q))
             for r in range(world)]
    for p in procs:
        p.start()
    rates = q.get()
    for p in procs:
        p.join()
    return rates, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mlp", "llm"], default="mlp")
    ap.add_argument("--repeat", type=int, default=40, help="mlp: copies of the digits rows")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--hidden", default="512,512", help="mlp: hidden sizes")
    ap.add_argument("--size", default="tiny", help="llm: tiny | small | base | 125m (transformers' Llama)")
    ap.add_argument("--sentences", type=int, default=20000, help="llm: package-docs sentences to train on")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    from maas.runtime import ensure_ray
    from maas.spec import spec_from_dict
    from maas.train.trainer import fit

    ensure_ray(None, quiet=True)
    tmp = Path(tempfile.mkdtemp(prefix="maas-overhead-"))
    if args.model == "llm":
        from maas.data.blocks import prepare_lm_data
        from maas.spec import LMModelSpec, TextDataSpec

        config = LMModelSpec(name="lm", size=args.size).config()
        data = prepare_lm_data(TextDataSpec(limit=args.sentences, val_fraction=0.0), config["block_size"],
                               str(tmp / "run"), vocab_size=config["vocab_size"])
        config["vocab_size"] = data.counts["vocab_size"]
        tokens = np.concatenate([b["tokens"] for b in data.train.iter_batches(batch_format="numpy")]).astype(np.int64)
        x, y = tokens[:, :-1], tokens[:, 1:]
        train_ds, task, row_bytes, init, features = data.train, "lm", tokens.shape[1] * 4, {}, None
        from maas.models import build_model

        n_params = sum(p.numel() for p in build_model(config).parameters())
        title = (f"Llama {args.size} ({n_params / 1e6:.2f}M parameters, block {config['block_size']} tokens, "
                 f"vocabulary {config['vocab_size']}), {len(y):,} train blocks")
    else:
        from gpu_train import make_data

        from maas.data import prepare_data

        hidden = [int(h) for h in args.hidden.split(",")]
        make_data(tmp / "digits.parquet", args.repeat)
        spec = spec_from_dict({"data": {"path": str(tmp / "digits.parquet"), "label": "target"},
                               "model": {"name": "digits"}})
        prepared = prepare_data(spec.data, str(tmp / "run"))
        x, y = prepared.numpy("train")
        config = {"arch": "mlp", "input_dim": x.shape[1], "num_classes": 10, "hidden_sizes": hidden, "dropout": 0.1}
        init = {"mean": prepared.mean, "std": prepared.std}
        train_ds, task, row_bytes, features = prepared.train, "classify", 4 * x.shape[1] + 8, prepared.features
        title = f"MLP 64-{'-'.join(map(str, hidden))}-10, {len(y):,} train rows"
    rows = []
    for world in (1, 2):
        rates, wall = plain(world, x, y, {**config, **init}, args.epochs, args.batch_size)
        t = spec_from_dict({"data": {"path": "-", "label": "-"}, "model": {"name": "m"},
                            "train": {"num_workers": world, "epochs": args.epochs, "device": "cpu",
                                      "batch_size": args.batch_size, "learning_rate": 1e-3, "cpus_per_worker": 1,
                                      "checkpoint_every_epochs": 0}}).train
        t0 = time.perf_counter()
        result = fit(t, config, train_ds, None, rows=len(y), row_bytes=row_bytes, run_dir=str(tmp / f"run-{world}"),
                     task=task, features=features, init=init)
        maas_wall = time.perf_counter() - t0
        plain_sps = statistics.median(rates[1:] or rates)
        maas_sps = statistics.median([h["samples_per_s"] for h in result.history[1:]] or
                                     [result.history[0]["samples_per_s"]])
        rows.append((world, plain_sps, maas_sps, 100 * (plain_sps - maas_sps) / plain_sps, wall, maas_wall))

    per_row = config["block_size"] if args.model == "llm" else 1
    unit = "tokens/s" if args.model == "llm" else "samples/s"
    print(f"\n{title}, batch {args.batch_size} per worker, {args.epochs} epochs, 1 thread per worker, "
          f"{os.cpu_count()} CPU(s)\n")
    print(f"| workers | plain PyTorch {unit} | maas (Ray Train) {unit} | maas overhead | plain wall s | maas wall s |")
    print("|---|---|---|---|---|---|")
    for world, p, m, over, w1, w2 in rows:
        print(f"| {world} | {p * per_row:,.0f} | {m * per_row:,.0f} | {over:+.1f}% | {w1:.1f} | {w2:.1f} |")
    print("\nmaas epochs also checkpoint at the end; the rates above time the training pass only, as the plain "
          "loop's do.")


if __name__ == "__main__":
    main()
