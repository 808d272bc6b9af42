"""The per-worker training recipe: setup -> (resume) -> epochs of train + validate -> checkpoint.

Runs inside each Ray Train worker. Checkpoints hold ``model.safetensors`` + ``model.json`` (loadable by
serving without pickle), ``optimizer.pt`` (read back with ``torch.load(weights_only=True)``) and
``state.json`` (epoch and metric history), so a restarted worker group resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maas.models import build_model
from maas.models.artifacts import load_torch_model, save_torch_model, unwrap

STATE, OPTIMIZER = "state.json", "optimizer.pt"


class ShardBatches:
    """One worker's shard as (x, y) numpy batches, streamed from Ray Data every epoch or, when ``cache`` is
    set (the driver sets it for shards under ``train.cache_shard_mb``), read once and reshuffled in memory:
    each streamed epoch pays a fixed setup cost that dwarfs the compute of a small data set."""

    def __init__(self, shard, features: list[str], cache: bool, shuffle_buffer: int):
        self.shard, self.features, self.cache, self.shuffle_buffer = shard, features, cache, shuffle_buffer
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None

    def _stream(self, batch_size: int, seed: Optional[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shuffle = {} if seed is None else dict(local_shuffle_buffer_size=self.shuffle_buffer,
                                               local_shuffle_seed=seed)
        for batch in self.shard.iter_batches(batch_size=batch_size, batch_format="numpy", **shuffle):
            x = np.stack([batch[c] for c in self.features], axis=1).astype(np.float32, copy=False)
            yield x, batch["__y"]

    def epoch(self, batch_size: int, seed: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self.cache:
            yield from self._stream(batch_size, seed)
            return
        if self._x is None:
            parts = list(self._stream(4096, None))
            self._x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(self.features)),
                                                                                     np.float32)
            self._y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.arange(len(self._y)) if seed is None else np.random.default_rng(seed).permutation(len(self._y))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self._x[idx], self._y[idx]


def _to(device: torch.device, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _resume(model: nn.Module, config: dict) -> tuple[int, list, dict | None]:
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, [], None
    with ckpt.as_directory() as folder:
        restored, _ = load_torch_model(folder)
        model.load_state_dict(restored.state_dict())
        state = json.loads(open(os.path.join(folder, STATE)).read())
        opt_state = torch.load(os.path.join(folder, OPTIMIZER), weights_only=True, map_location="cpu")
    return state["epoch"] + 1, state["history"], opt_state


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(config["seed"])
    # the train split's normalisation statistics initialise the model's Standardize buffers; they are then
    # part of the weights, so model.json (the architecture) does not need to repeat them
    model = build_model({**config["model_config"], **config["normalization"]})
    start_epoch, history, opt_state = _resume(model, config)
    if start_epoch and rank == 0:
        print(f"[train] resuming from the checkpoint of epoch {start_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model)  # DDP over gloo (CPU) or NCCL (GPU), moved to the device
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    bf16 = config.get("precision") == "bf16"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    features = config["features"]
    cache, buffer = config["cache_shards"], config["shuffle_buffer"]
    train_batches = ShardBatches(ray.train.get_dataset_shard("train"), features, cache, buffer)
    val_batches = ShardBatches(ray.train.get_dataset_shard("val"), features, cache, buffer) \
        if config["has_val"] else None

    best = max((h.get("val_accuracy", -h["epoch"]) for h in history), default=None)
    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        started = time.perf_counter()
        loss_sum = seen = correct = 0.0
        for xb, yb in train_batches.epoch(config["batch_size"], seed=config["seed"] * 100003 + epoch * 101 + rank):
            x, y = _to(device, xb, yb)
            with autocast():
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(y)).backward()
            optimizer.step()
            loss_sum += loss.item()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
        metrics = {"epoch": epoch}
        if epoch == start_epoch and start_epoch > 0:
            metrics["resumed_from_epoch"] = start_epoch  # this worker group restarted from a checkpoint
        train_seconds = time.perf_counter() - started
        t_loss, t_seen, t_correct = _all_sum([loss_sum, seen, correct], device)
        metrics.update(train_loss=t_loss / max(t_seen, 1), train_accuracy=t_correct / max(t_seen, 1),
                       train_seconds=train_seconds, samples_per_s=t_seen / max(train_seconds, 1e-9))

        if val_batches is not None:
            model.eval()
            v_loss = v_seen = v_correct = 0.0
            with torch.no_grad():
                for xb, yb in val_batches.epoch(1024):
                    x, y = _to(device, xb, yb)
                    with autocast():
                        logits = model(x).float()
                    v_loss += loss_fn(logits, y).item()
                    v_seen += len(y)
                    v_correct += (logits.argmax(1) == y).sum().item()
            v_loss, v_seen, v_correct = _all_sum([v_loss, v_seen, v_correct], device)
            metrics.update(val_loss=v_loss / max(v_seen, 1), val_accuracy=v_correct / max(v_seen, 1))
        history.append(metrics)
        if rank == 0:  # shows in job logs (`maas logs --follow`) as the run's progress
            done = epoch + 1
            val = f" val_accuracy={metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
            print(f"[train] epoch {done}/{config['epochs']} ({100 * done // config['epochs']}%) "
                  f"loss={metrics['train_loss']:.4f}{val}", flush=True)

        # Checkpoint when validation improves (what keep-best-N ranks), every N epochs (the most progress a
        # failure can cost) and at the end. Each checkpoint is a persisted upload plus a barrier: on small
        # models writing one every epoch costs more than the epoch itself.
        score = metrics.get("val_accuracy", -epoch)
        improved = best is None or score > best
        best = score if improved else best
        every = config["checkpoint_every_epochs"]
        due = improved or epoch == config["epochs"] - 1 or (every and (epoch + 1) % every == 0)
        if not due:
            continue  # every rank computes the same `due` (validation figures are all-reduced)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_torch_model(unwrap(model), config["model_config"], tmp)
                torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER))
                with open(os.path.join(tmp, STATE), "w") as f:
                    json.dump({"epoch": epoch, "history": history}, f)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
