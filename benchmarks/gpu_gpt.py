"""The GPT decoder through the train stage (Ray Train) with DDP and FSDP2, fp32 and bf16: tokens/s and MFU.

    python benchmarks/gpu_gpt.py [--size 125m] [--sentences 40000] [--epochs 2] [--batch-size 16]

On a GPU host every worker takes one GPU (train.device auto) and MFU is reported against the GPU's dense
peak (maas.train.trainer.PEAK_FLOPS); on a CPU-only machine it runs the same code on CPUs (use --size tiny).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="125m")
    ap.add_argument("--sentences", type=int, default=40000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--precisions", default="bf16,fp32")
    args = ap.parse_args()

    import ray

    from maas.lm import prepare_lm_data
    from maas.models import build_model
    from maas.runtime import ensure_ray
    from maas.spec import GPTModelSpec, TextDataSpec, TrainSpec
    from maas.train.trainer import fit

    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = max(1, gpus)
    tmp = Path(tempfile.mkdtemp(prefix="maas-gpt-"))
    config = GPTModelSpec(name="gpt", size=args.size).config()
    data = prepare_lm_data(TextDataSpec(limit=args.sentences), config["block_size"], str(tmp / "data"))
    rows = []
    for strategy in args.strategies.split(","):
        for precision in args.precisions.split(","):
            t = TrainSpec(num_workers=workers, strategy=strategy, precision=precision, epochs=args.epochs,
                          batch_size=args.batch_size, learning_rate=3e-4, lr_schedule="cosine", warmup_fraction=0.05,
                          max_grad_norm=1.0, checkpoint_every_epochs=0, log_every_steps=20, cpus_per_worker=1)
            t0 = time.perf_counter()
            result = fit(t, config, data.train, data.val, rows=data.counts["splits"]["train"],
                         row_bytes=(config["block_size"] + 1) * 8, run_dir=str(tmp / f"{strategy}-{precision}"),
                         task="lm")
            wall = time.perf_counter() - t0
            steady = result.history[1:] or result.history
            rows.append((strategy, precision, result.device, statistics.median(h["tokens_per_s"] for h in steady),
                         statistics.median(h.get("mfu", float("nan")) for h in steady),
                         result.best_metrics.get("val_loss", float("nan")), wall))

    import torch

    name = torch.cuda.get_device_name(0) if gpus else "no GPU"
    params = build_model(config).num_parameters()
    print(f"\nGPT {args.size} ({params / 1e6:.1f}M parameters, block {config['block_size']}), {workers} worker(s), "
          f"batch {args.batch_size} per worker, {data.counts['splits']['train']:,} train blocks; GPU: {name}\n")
    print("| strategy | precision | ran on | tokens/s (median epoch) | MFU | val loss | wall s |")
    print("|---|---|---|---|---|---|---|")
    for strategy, precision, ran, tps, mfu, loss, wall in rows:
        shown = "-" if mfu != mfu else f"{mfu:.1%}"  # NaN: no known peak (CPU, or an unlisted GPU)
        print(f"| {strategy} | {precision} | {ran} | {tps:,.0f} | {shown} | {loss:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
