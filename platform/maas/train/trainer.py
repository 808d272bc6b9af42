"""The train stage: a Ray Train TorchTrainer over the data stage's splits, best checkpoint by val accuracy."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from maas.data import DataResult
from maas.exceptions import TrainingError
from maas.models.artifacts import load_torch_model
from maas.spec import ClassifierSpec, TokenizeOp, TrainSpec
from maas.train.checkpoint import STATE
from maas.train.config import LoopConfig, Task
from maas.train.loop import train_loop_per_worker
from maas.train.shards import driver_shards


@dataclass
class TrainResult:
    model: nn.Module
    model_config: dict
    checkpoint_path: str
    best_metrics: dict
    history: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # every log_every_steps: loss, lr, throughput (and MFU on GPUs)
    device: str = "cpu"
    run_path: str = ""


def choose_device(spec_device: str, num_workers: int) -> bool:
    """True to train on GPUs: asked for explicitly, or 'auto' and the cluster has one per worker."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if spec_device == "cuda":
        if gpus < num_workers:
            raise TrainingError(f"train.device=cuda but the cluster has {gpus:g} GPU(s) for "
                                f"{num_workers} workers; lower train.num_workers or use train.device=auto")
        return True
    return spec_device == "auto" and gpus >= num_workers


def _check_cpus_left_for_streaming(worker_cpus: float) -> None:
    """Streaming shards are read by Ray Data tasks while training runs; they need a CPU the workers do not
    hold, or the run waits forever. Refuse up front with the fix, rather than hang."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0))
    if total - worker_cpus < 1:
        raise TrainingError(
            f"the train split is streamed (over train.cache_shard_mb per worker) and the training workers take "
            f"{worker_cpus:g} of the cluster's {total:g} CPUs, leaving none to read the data: lower "
            "train.cpus_per_worker or train.num_workers, raise train.cache_shard_mb, or add a node")


# dense peak FLOP/s per GPU for MFU, by name fragment and precision (NVIDIA data sheets, no sparsity)
PEAK_FLOPS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
              "A100": {"bf16": 312e12, "fp32": 19.5e12}, "L4": {"bf16": 121e12, "fp32": 30e12}}


def peak_flops(precision: str) -> float:
    """The driver's view of a worker GPU's peak FLOP/s (0 when unknown: MFU is then not reported)."""
    import ray

    try:
        names = [r for n in ray.nodes() for r in n.get("Resources", {}) if r.startswith("accelerator_type:")]
    except Exception:
        names = []
    for fragment, peaks in PEAK_FLOPS.items():
        if any(fragment in n for n in names):
            return peaks["bf16" if precision == "bf16" else "fp32"]
    return 0.0


def write_curves(steps: list, history: list, run_dir: str, run_name: str) -> dict:
    """Per-step metrics as ``<run>/<name>_metrics.jsonl`` and loss/accuracy curves as ``<name>_curves.png``."""
    if "://" in run_dir:
        return {}
    os.makedirs(run_dir, exist_ok=True)
    paths = {"metrics": os.path.join(run_dir, f"{run_name}_metrics.jsonl")}
    with open(paths["metrics"], "w") as f:
        for entry in steps:
            f.write(json.dumps({"kind": "step", **entry}) + "\n")
        for entry in history:
            f.write(json.dumps({"kind": "epoch", **entry}) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    if steps:
        a.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss (per step)", lw=0.8)
    epochs_end = [h["step"] for h in history if "step" in h]
    if epochs_end and len(epochs_end) == len(history):
        a.plot(epochs_end, [h["train_loss"] for h in history], "o-", label="train loss (epoch)")
        if all("val_loss" in h for h in history):
            a.plot(epochs_end, [h["val_loss"] for h in history], "s-", label="val loss")
            b.plot(epochs_end, [h["val_accuracy"] for h in history], "s-", label="val accuracy")
        b.plot(epochs_end, [h["train_accuracy"] for h in history], "o-", label="train accuracy")
    a.set_xlabel("optimizer step"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.set_xlabel("optimizer step"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    paths["png"] = os.path.join(run_dir, f"{run_name}_curves.png")
    fig.savefig(paths["png"])
    plt.close(fig)
    return paths


def train_model(spec: ClassifierSpec, data: DataResult, run_dir: str, run_name: str = "train") -> TrainResult:
    """Train ``spec.model`` on ``data`` with ``spec.train``; checkpoints go under ``run_dir``.

    Raises:
        TrainingError: the workers failed more than ``train.max_failures`` times, or no checkpoint was made.
    """
    splits = data.counts.get("splits", {})
    if spec.model.arch == "minilm_classifier":
        from maas.models.encoder import encoder_config

        length = text_max_length(spec)
        model_config = {"arch": "text_classifier", "num_classes": len(data.classes), "dropout": spec.model.dropout,
                        "encoder": encoder_config(spec.model.pretrained), "max_length": length}
        return fit(spec.train, model_config, data.train, data.val if splits.get("val", 0) > 0 else None,
                   rows=splits.get("train", 0), row_bytes=16 * length + 8, run_dir=run_dir, run_name=run_name,
                   task="classify_text", init={"pretrained": spec.model.pretrained})
    model_config = {"arch": spec.model.arch, "input_dim": len(data.features), "num_classes": len(data.classes),
                    "hidden_sizes": list(spec.model.hidden_sizes), "dropout": spec.model.dropout}
    return fit(spec.train, model_config, data.train, data.val if splits.get("val", 0) > 0 else None,
               rows=splits.get("train", 0), row_bytes=4 * len(data.features) + 8, run_dir=run_dir,
               run_name=run_name, features=data.features, init={"mean": data.mean, "std": data.std})


def text_max_length(spec: ClassifierSpec) -> int:
    """The token length of the spec's (last) tokenize op."""
    return spec.data.ops_of(TokenizeOp)[-1].max_length


def fit(t: TrainSpec, model_config: dict, train, val, *, rows: int, row_bytes: int, run_dir: str,
        run_name: str = "train", task: Task = "classify", features: Optional[list] = None,
        init: Optional[dict] = None) -> TrainResult:
    """Ray Train run of ``model_config`` over the ``train`` (and ``val``, when given) Ray Datasets.

    ``task``: 'classify' (rows of ``features`` columns and ``__y``), 'classify_text' (``input_ids`` and
    ``attention_mask`` arrays and ``__y``) or 'lm' (rows of ``tokens``, block_size + 1 token ids each: next-token
    prediction). ``init`` joins the model config when the workers build the model
    (normalisation statistics) but is not part of model.json. ``rows`` and ``row_bytes`` size the shards
    (whether each worker caches its shard in memory) and the LR schedule's step count.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    # A worker's report() waits until the controller polls it, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
    # (2 s by default): that caps a run at one checkpoint per 2 s however short an epoch is. Ray Train
    # propagates this variable from the driver to its controller; an explicit setting is kept.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else each progress line is logged twice
    use_gpu = choose_device(t.device, t.num_workers)
    has_val = val is not None
    if 0 < rows < t.num_workers:
        raise TrainingError(f"the train split has {rows} row(s), fewer than train.num_workers ({t.num_workers}); "
                            "add data or lower train.num_workers")
    splits = {"train": train, **({"val": val} if has_val else {})}
    shards, datasets = {}, splits
    if rows * row_bytes / t.num_workers / 2**20 < t.cache_shard_mb:
        # small: read the prepared data now, so no Ray Data task needs a CPU while the training workers
        # hold them all (2 workers on a 2-CPU machine would otherwise wait for their data forever), and cut
        # it into one object per worker here (maas.train.shards: no split actors, 10 s a run on 2 cores)
        shards = {name: driver_shards(ds.materialize(), t.num_workers) for name, ds in splits.items()}
        datasets = {}
    else:
        _check_cpus_left_for_streaming(t.num_workers * t.cpus_per_worker)
    config = LoopConfig(
        train=t.model_copy(), architecture=model_config, normalization=dict(init or {}), task=task,
        features=tuple(features or ()), has_val=has_val,
        steps_per_epoch=max(1, math.ceil(rows / t.num_workers / t.batch_size / t.grad_accumulation_steps)),
        shards=shards,
        progress_path=os.path.join(run_dir, f"{run_name}_progress.json") if "://" not in run_dir else None,
        peak_flops_per_worker=peak_flops(t.precision) if use_gpu else 0.0)
    resources = {"CPU": t.cpus_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.model_dump(),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=t.placement_strategy),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=run_dir,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.checkpoints_to_keep,
                checkpoint_score_attribute="val_accuracy" if has_val else "epoch",
                checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError wraps the worker's traceback
        raise TrainingError(f"training failed: {type(exc).__name__}: {str(exc)[-2000:]}") from None
    if not result.best_checkpoints:
        raise TrainingError("training finished without a checkpoint; check train.epochs and the logs")
    score = "val_accuracy" if has_val else "epoch"
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(score, float("-inf")))
    with best_ckpt.as_directory() as folder:
        model, loaded_config = load_torch_model(folder)
    with result.checkpoint.as_directory() as folder:
        state = json.loads(open(os.path.join(folder, STATE)).read())
    history = state["history"]
    write_curves(state.get("steps", []), history, run_dir, run_name)
    return TrainResult(model=model, model_config=loaded_config, checkpoint_path=best_ckpt.path,
                       best_metrics=dict(best_metrics), history=history, steps=state.get("steps", []),
                       device="cuda" if use_gpu else "cpu",
                       run_path=result.path)
