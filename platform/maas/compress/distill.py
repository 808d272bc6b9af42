"""Knowledge distillation (and fine-tuning after pruning) of sentence encoders, as a Ray Train job.

The teacher (the parent version) embeds the unlabelled training sentences once, in a Ray Data pass
(``map_batches`` on an actor that holds the teacher); the student then learns to reproduce those embeddings
(mean squared error between unit vectors, i.e. 2 - 2 cos) in a data-parallel Ray Train run: DDP over gloo on
CPUs, NCCL on GPUs. Each epoch ends with the student's cosine to the teacher on held-out sentences; every
epoch is checkpointed (safetensors, so resuming after a failure reloads no pickle) and the best one is kept.

The student starts from the teacher itself: ``layers`` picks which of the teacher's transformer layers it
keeps (a 3-layer student of a 6-layer teacher keeps, say, [1, 3, 5]), embeddings included. Fine-tuning a
pruned model is the same job with the pruned model as the student; for unstructured pruning its keep-masks
are re-applied after every step, so pruned weights stay zero.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from maas.exceptions import CompressionError
from maas.spec import TrainSpec
from maas.train.shards import DriverShard, driver_shards

MASKS = "masks.safetensors"
# a worker's teacher targets under train.cache_shard_mb's default are cut on the driver (maas.train.shards)
SMALL_SHARD_BYTES = TrainSpec.model_fields["cache_shard_mb"].default * 2**20


def student_from_teacher(teacher: nn.Module, config: dict, layers: list[int]) -> tuple[nn.Module, dict]:
    """A copy of ``teacher`` keeping only the transformer layers ``layers`` (indices, in order)."""
    from maas.models import build_model

    n = len(config["intermediate_sizes"])
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad or sorted(set(layers)) != list(layers):
        raise CompressionError(f"distill.layers must be increasing indices of the teacher's {n} layers, "
                               f"got {layers}")
    new_config = {**config, "intermediate_sizes": [config["intermediate_sizes"][i] for i in layers]}
    student = build_model(new_config)
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("encoder.layer."):
            idx = int(key.split(".")[2])
            if idx in layers:
                state[key.replace(f"encoder.layer.{idx}.", f"encoder.layer.{layers.index(idx)}.", 1)] = value
        else:
            state[key] = value
    student.load_state_dict(state, strict=True)
    return student, new_config


def _folder_files(folder) -> dict:
    """A model folder's files by name, for the object store: Ray tasks and workers on any node read them
    from there, not from a driver-local folder (a cluster's nodes share no disk). ONNX graphs are left out:
    training and the teacher pass run the torch weights."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file() and ".onnx" not in p.name}


@contextlib.contextmanager
def _unpacked(files: dict):
    """``files`` (from ``_folder_files``) written into a temporary folder, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="maas-distill-") as tmp:
        for name, data in files.items():
            Path(tmp, name).write_bytes(data)
        yield tmp


class _TeacherEmbedder:
    """Ray Data actor: texts -> the teacher's embeddings (plus the token ids the student will read)."""

    def __init__(self, files):
        import ray

        from maas.models.predictor import EncoderPredictor

        with _unpacked(ray.get(files) if isinstance(files, ray.ObjectRef) else files) as folder:
            self.predictor = EncoderPredictor(folder, "torch")

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        return {"text": np.array(texts, dtype=object), "target": list(self.predictor(texts))}


def distill_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: student <- teacher embeddings, DDP, warmup + cosine LR, per-epoch checkpoints."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import load_file

    from maas.models.artifacts import load_torch_model, save_torch_model, unwrap
    from maas.models.encoder import EncoderTokenizer
    from maas.train.loop import lr_at

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"])
    # Ray pins a 1-CPU worker to one thread; a distillation job has the node to itself once the teacher
    # pass is done, so each worker takes its share of the node's cores (this halves the time on 2 cores)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))
    start_epoch, history = 0, []
    ckpt = ray.train.get_checkpoint()
    with _unpacked(ray.get(config["init"])) as init_dir, \
            (ckpt.as_directory() if ckpt is not None else contextlib.nullcontext(init_dir)) as folder:
        model, model_config = load_torch_model(folder)
        if ckpt is not None:
            state = json.loads(Path(folder, "state.json").read_text())
            start_epoch, history = state["epoch"] + 1, state["history"]
            if rank == 0:
                print(f"[distill] resuming from the checkpoint of epoch {state['epoch'] + 1}", flush=True)
        masks = load_file(str(Path(init_dir) / MASKS)) if config.get("masked") else None
        tokenizer = EncoderTokenizer(Path(init_dir) / "tokenizer.json", config["max_length"])
    model.train()
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=0.01)
    shard = DriverShard(config["shards"][rank]) if config.get("shards") else ray.train.get_dataset_shard("train")
    steps_per_epoch = max(1, math.ceil(config["train_rows"] / world / config["batch_size"]))
    total = steps_per_epoch * config["epochs"]
    warmup = max(1, int(total * config["warmup_fraction"]))
    step = start_epoch * steps_per_epoch
    val_texts = config["val_texts"]
    val_target = torch.tensor(config["val_targets"], dtype=torch.float32)

    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy",
                                        local_shuffle_buffer_size=config["batch_size"] * 8,
                                        local_shuffle_seed=config["seed"] + epoch * 7919 + rank):
            ids, mask = tokenizer([str(t) for t in batch["text"]])
            target = torch.from_numpy(np.stack(batch["target"]).astype(np.float32)).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config["learning_rate"], "cosine")
            out = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
            loss = ((out - target) ** 2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if masks is not None:
                from maas.compress.encoder_ops import apply_masks

                apply_masks(unwrap(model), masks)
            loss_sum += loss.item() * len(ids)
            seen += len(ids)
            step += 1
        plain = unwrap(model).eval()
        with torch.no_grad():
            emb = torch.cat([plain(*(torch.from_numpy(a).to(device) for a in tokenizer(val_texts[i:i + 64]))).cpu()
                             for i in range(0, len(val_texts), 64)])
        cos = (emb * val_target).sum(1)
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_cosine": float(cos.mean()),
                   "val_cosine_min": float(cos.min()), "steps": step}
        history.append(metrics)
        if rank == 0:
            print(f"[distill] epoch {epoch + 1}/{config['epochs']} loss={metrics['train_loss']:.4f} "
                  f"val_cosine={metrics['val_cosine']:.4f}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                save_torch_model(plain, model_config, tmp)
                Path(tmp, "state.json").write_text(json.dumps({"epoch": epoch, "history": history}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def distill(teacher_dir: str | Path, student: nn.Module, student_config: dict, train_texts: list[str],
            val_texts: list[str], val_targets: np.ndarray, run_dir: str | Path, name: str, *, epochs: int = 2,
            learning_rate: float = 3e-4, batch_size: int = 32, num_workers: int = 1, use_gpu: bool = False,
            masks: Optional[dict] = None, max_length: int = 128, warmup_fraction: float = 0.06,
            seed: int = 0, max_failures: int = 1) -> tuple[nn.Module, dict, list]:
    """Train ``student`` to reproduce the embeddings of the teacher in ``teacher_dir`` on ``train_texts``.

    Returns:
        (best student by held-out cosine, its config, per-epoch history)

    Raises:
        CompressionError: the Ray Train run failed (after ``max_failures`` restarts) or left no checkpoint.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from safetensors.torch import save_file

    from maas.models.artifacts import load_torch_model, save_torch_model

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    with tempfile.TemporaryDirectory(prefix="maas-distill-") as init_dir:  # the student's start, in the object store
        save_torch_model(student, student_config, init_dir)
        Path(init_dir, "tokenizer.json").write_bytes((Path(teacher_dir) / "tokenizer.json").read_bytes())
        if masks:
            save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, str(Path(init_dir, MASKS)))
        init = ray.put(_folder_files(init_dir))

    texts = ray.data.from_items([{"text": t} for t in train_texts])
    targets = texts.map_batches(_TeacherEmbedder, fn_constructor_kwargs={"files": ray.put(_folder_files(teacher_dir))},
                                batch_size=64, concurrency=1, num_cpus=1).materialize()
    config = {"init": init, "masked": bool(masks), "max_length": max_length, "epochs": epochs,
              "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed, "train_rows": len(train_texts),
              "warmup_fraction": warmup_fraction, "val_texts": list(val_texts),
              "val_targets": np.asarray(val_targets, dtype=np.float32).tolist()}
    datasets = {"train": targets}
    if targets.size_bytes() / num_workers < SMALL_SHARD_BYTES:  # cut on the driver: no split actors
        config["shards"], datasets = driver_shards(targets, num_workers), {}
    trainer = TorchTrainer(
        distill_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        datasets=datasets,
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(run_dir),  # a local path or a URI (the run folder's, like the store)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_cosine",
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures)))
    try:
        result = trainer.fit()
    except Exception as exc:
        raise CompressionError(f"distillation {name!r} failed: {type(exc).__name__}: {str(exc)[-2000:]}") from None
    if not result.best_checkpoints:
        raise CompressionError(f"distillation {name!r} finished without a checkpoint")
    best_ckpt, _ = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_cosine", -1.0))
    with best_ckpt.as_directory() as folder:
        model, config_out = load_torch_model(folder)
    with result.checkpoint.as_directory() as folder:  # the latest: its history covers every epoch
        history = json.loads(Path(folder, "state.json").read_text())["history"]
    return model.eval(), config_out, history
