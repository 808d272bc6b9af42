"""The per-worker training recipe: setup -> (resume) -> epochs of train + validate -> checkpoint.

Runs inside each Ray Train worker. Checkpoints hold ``model.safetensors`` + ``model.json`` (loadable by
serving without pickle), ``optimizer.pt`` (read back with ``torch.load(weights_only=True)``) and
``state.json`` (epoch and metric history), so a restarted worker group resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maas.models import build_model
from maas.models.artifacts import load_torch_model, save_torch_model, unwrap

STATE, OPTIMIZER = "state.json", "optimizer.pt"


def _tensors(batch: dict, features: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([batch[c] for c in features], axis=1).astype(np.float32, copy=False)
    return torch.from_numpy(x).to(device), torch.from_numpy(batch["__y"]).to(device)


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
    model = ray.train.torch.prepare_model(model)  # DDP over gloo (CPU) or NCCL (GPU), moved to the device
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"],
                                  weight_decay=config["weight_decay"])
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    features = config["features"]
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        loss_sum = seen = correct = 0.0
        for batch in train_shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy",
                                              local_shuffle_buffer_size=config["shuffle_buffer"],
                                              local_shuffle_seed=config["seed"] * 1000 + epoch * 10 + rank):
            x, y = _tensors(batch, features, device)
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(y)).backward()
            optimizer.step()
            loss_sum += loss.item()
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
        metrics = {"epoch": epoch}
        t_loss, t_seen, t_correct = _all_sum([loss_sum, seen, correct], device)
        metrics.update(train_loss=t_loss / max(t_seen, 1), train_accuracy=t_correct / max(t_seen, 1))

        if val_shard is not None:
            model.eval()
            v_loss = v_seen = v_correct = 0.0
            with torch.no_grad():
                for batch in val_shard.iter_batches(batch_size=1024, batch_format="numpy"):
                    x, y = _tensors(batch, features, device)
                    logits = model(x)
                    v_loss += loss_fn(logits, y).item()
                    v_seen += len(y)
                    v_correct += (logits.argmax(1) == y).sum().item()
            v_loss, v_seen, v_correct = _all_sum([v_loss, v_seen, v_correct], device)
            metrics.update(val_loss=v_loss / max(v_seen, 1), val_accuracy=v_correct / max(v_seen, 1))
        history.append(metrics)

        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_torch_model(unwrap(model), config["model_config"], tmp)
                torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER))
                with open(os.path.join(tmp, STATE), "w") as f:
                    json.dump({"epoch": epoch, "history": history}, f)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
