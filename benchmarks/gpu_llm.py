"""The decoder (transformers' Llama) through the train stage (Ray Train): DDP vs FSDP2, eager vs compiled.

    python benchmarks/gpu_llm.py [--size 300m] [--runs ddp,fsdp,ddp+compile,fsdp+compile] [--precision bf16]
                                 [--json benchmarks/results/gpu_llm.json]

Every run goes through ``maas.train.trainer.fit`` exactly as ``maas run`` calls it, with ``train.device: auto``
(one worker per GPU when the cluster has GPUs, CPUs otherwise). Throughput is the median of the per-step log
windows after the first (which holds start-up and, compiled, the compile), so one short epoch measures it; MFU
is against the GPU's dense peak (``maas.train.trainer.PEAK_FLOPS``); peak memory is the largest
``torch.cuda.max_memory_allocated`` of any rank. Serving a trained model on vLLM is
``benchmarks/llm_serving.py``'s measurement.

``--deadline-s`` bounds the training runs: runs not started by then are skipped and said so, and the JSON is
rewritten after every run, so a cut-short session keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def software() -> dict:
    import ray
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else "cpu", "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def summarize(result, wall: float) -> dict:
    """Steady-state figures of one fit(): medians over the step windows after the first."""
    steps = result.steps
    steady = steps[1:] or steps
    hist = result.history[-1] if result.history else {}

    def med(key: str) -> float:
        vals = [s[key] for s in steady if key in s]
        return statistics.median(vals) if vals else float("nan")

    return {"tokens_per_s": med("tokens_per_s"), "mfu": med("mfu"), "device": result.device,
            "peak_memory_gb": hist.get("peak_memory_gb"), "epoch_tokens_per_s": hist.get("tokens_per_s"),
            "val_loss": result.best_metrics.get("val_loss"), "val_bits_per_byte": result.best_metrics.get(
                "val_bits_per_byte"), "steps": hist.get("step"), "wall_s": round(wall, 1),
            "loss_curve": [{"step": s["step"], "loss": round(s["loss"], 4), "tokens_per_s": round(s.get(
                "tokens_per_s", 0))} for s in steps]}


def plot_curves(reports: list[dict], path: str) -> None:
    """Loss and tokens/s per logged step of every run in ``reports`` (one or more JSON reports), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for i, report in enumerate(reports):
        for run in report.get("runs", []):
            if "loss_curve" not in run:
                continue
            label = run["run"] + (f" (sitting {i + 1})" if len(reports) > 1 else "")
            steps = [c["step"] for c in run["loss_curve"]]
            a.plot(steps, [c["loss"] for c in run["loss_curve"]], marker=".", label=label)
            b.plot(steps[1:], [c["tokens_per_s"] for c in run["loss_curve"]][1:], marker=".", label=label)
    cfg = reports[0]["config"]
    a.set_title(f"Llama {cfg['size']} train loss ({cfg['precision']}, {cfg['tokens_per_step']:,} tokens/step)")
    a.set_xlabel("optimizer step"), a.set_ylabel("loss (last micro-batch)"), a.set_yscale("log"), a.legend()
    b.set_title(f"throughput on {reports[0]['software']['device']}")
    b.set_xlabel("optimizer step"), b.set_ylabel("tokens/s (window)"), b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", nargs="+", metavar="JSON", help="only draw the curves of saved reports (to --png)")
    ap.add_argument("--png", default="", help="where the loss/throughput curves go (default: beside --json)")
    ap.add_argument("--size", default="300m")
    ap.add_argument("--sentences", type=int, default=40000, help="package-docs sentences (the text to train on)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", default="ddp,fsdp,ddp+compile,fsdp+compile",
                    help="comma-separated STRATEGY[+compile] runs, in order")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--cpus-per-worker", type=float, default=None, help="default: half the node's CPUs")
    ap.add_argument("--deadline-s", type=float, default=0, help="skip runs that would start after this (0: none)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.plot:
        plot_curves([json.loads(Path(p).read_text()) for p in args.plot], args.png or "gpu_llm_curves.png")
        return
    began = time.perf_counter()

    import ray

    from maas.data.blocks import prepare_lm_data
    from maas.models import build_model
    from maas.runtime import ensure_ray
    from maas.spec import LMModelSpec, TextDataSpec, TrainSpec
    from maas.train.trainer import fit, peak_flops

    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, gpus)
    # the workers build the model and run the host side of each step: give them the node's cores
    per_worker = args.cpus_per_worker or max(1, (cpus // 2) // workers)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="maas-llm-"))
    config = LMModelSpec(name="lm", size=args.size).config()
    t0 = time.perf_counter()
    data = prepare_lm_data(TextDataSpec(limit=args.sentences), config["block_size"], str(tmp / "data"),
                           vocab_size=config["vocab_size"])
    data_s = time.perf_counter() - t0
    config["vocab_size"] = data.counts["vocab_size"]
    with torch.device("meta"):  # counted from the shapes
        params = sum(p.numel() for p in build_model(config).parameters())
    report = {"benchmark": "gpu_llm", "under_ray": True, "software": software(),
              "config": {"size": args.size, **config, "parameters": params, "workers": workers,
                         "cpus_per_worker": per_worker, "batch_size_per_worker": args.batch_size,
                         "tokens_per_step": args.batch_size * config["block_size"] * workers,
                         "precision": args.precision, "epochs": args.epochs,
                         "train_blocks": data.counts["splits"]["train"], "data_stage_s": round(data_s, 1),
                         "bytes_per_token": round(data.counts["bytes_per_token"], 3),
                         "peak_flops": peak_flops(args.precision) if gpus else 0.0},
              "runs": [], "skipped": []}

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1))

    for run in args.runs.split(","):
        strategy, _, flag = run.partition("+")
        if args.deadline_s and time.perf_counter() - began > args.deadline_s:
            report["skipped"].append(run)
            continue
        t = TrainSpec(num_workers=workers, strategy=strategy, precision=args.precision, epochs=args.epochs,
                      batch_size=args.batch_size, learning_rate=3e-4, lr_schedule="cosine", warmup_fraction=0.05,
                      max_grad_norm=1.0, checkpoint_every_epochs=0, log_every_steps=args.log_every,
                      cpus_per_worker=per_worker, compile=flag == "compile", checkpoints_to_keep=1)
        t0 = time.perf_counter()
        try:
            result = fit(t, config, data.train, data.val, rows=data.counts["splits"]["train"],
                         row_bytes=(config["block_size"] + 1) * 4, run_dir=str(tmp / run.replace("+", "-")),
                         task="lm")
        except Exception as exc:  # keep going: one broken configuration must not lose the others
            report["runs"].append({"run": run, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}"})
            print(f"[llm] {run} failed: {exc}", flush=True)
            save()
            continue
        row = {"run": run, "strategy": strategy, "compile": flag == "compile", **summarize(result,
                                                                                         time.perf_counter() - t0)}
        report["runs"].append(row)
        print(f"[llm] {run}: {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']}, peak {row['peak_memory_gb']} GB, "
              f"val loss {row['val_loss']}", flush=True)
        import shutil

        shutil.rmtree(tmp / run.replace("+", "-"), ignore_errors=True)  # checkpoints of a 1B model are 12 GB
        save()

    save()
    if args.json or args.png:
        try:
            plot_curves([report], args.png or str(Path(args.json).with_suffix(".png")))
        except ImportError:
            pass

    s = report["software"]
    c = report["config"]
    print(f"\nLlama {args.size} ({params / 1e6:.1f}M parameters, block {config['block_size']}), {workers} worker(s), "
          f"batch {args.batch_size} x {config['block_size']} tokens per worker, {args.precision}, "
          f"{c['train_blocks']:,} train blocks; {s['device']}, torch {s['torch']}, Ray {s['ray']} (under Ray Train)\n")
    print("| run | ran on | tokens/s (median window) | MFU | peak GB | val loss | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        if "error" in r:
            print(f"| {r['run']} | failed: {r['error'][:80]} | | | | | |")
            continue
        mfu = "-" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"  # NaN: no known peak (CPU, unlisted GPU)
        mem = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        print(f"| {r['run']} | {r['device']} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | {r['val_loss']:.3f} | "
              f"{r['wall_s']} |")
    if report["skipped"]:
        print(f"\nskipped (deadline): {', '.join(report['skipped'])}")

if __name__ == "__main__":
    main()
