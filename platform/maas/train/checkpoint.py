"""Training checkpoints: what a worker group writes (DDP: rank 0 the whole model; FSDP: every rank its shard)
and reads back on resume. Model weights are safetensors + ``model.json``, optimizer state ``torch.save`` read
with ``weights_only=True``, progress ``state.json``."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import torch

from maas.models.artifacts import save_torch_model, unwrap

STATE, OPTIMIZER = "state.json", "optimizer.pt"


def resume_state(rank: int, world: int) -> tuple[Optional[dict], dict, Optional[dict]]:
    """(full model state or None, training state, this rank's optimizer state or None) from the last checkpoint.

    The model state is assembled whole (a DDP checkpoint holds it, an FSDP one holds per-rank shards), so a
    restarted group may even have another size; the optimizer state is reused when it was saved by the same
    rank of a group of the same size (always the case for DDP's single replicated state)."""
    import ray.train

    from maas.models.artifacts import SHARDS, WEIGHTS, load_sharded_state

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, {"epoch": -1, "step": 0, "history": [], "steps": []}, None
    with ckpt.as_directory() as folder:
        from safetensors.torch import load_file

        state = json.loads(open(os.path.join(folder, STATE)).read())
        model_state = load_file(os.path.join(folder, WEIGHTS)) if os.path.exists(os.path.join(folder, WEIGHTS)) \
            else load_sharded_state(folder)
        sharded = os.path.exists(os.path.join(folder, SHARDS))
        opt_name = f"optimizer-{rank:05d}-of-{world:05d}.pt" if sharded else OPTIMIZER
        opt_path = os.path.join(folder, opt_name)
        opt_state = torch.load(opt_path, weights_only=True, map_location="cpu") if os.path.exists(opt_path) else None
    state.setdefault("step", 0)
    state.setdefault("steps", [])
    return model_state, state, opt_state


def write_checkpoint(model, optimizer, architecture: dict, metrics: dict, state: dict, rank: int, world: int,
                     fsdp: bool) -> None:
    """DDP: rank 0 writes the whole model. FSDP: every rank writes its own shard (model and optimizer) into
    the same checkpoint directory; Ray Train merges the ranks' uploads."""
    import ray.train

    from maas.models.artifacts import save_shard

    if not fsdp and rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if fsdp:
            save_shard(model, architecture, tmp, rank, world)
            torch.save(_local_optimizer_state(optimizer), os.path.join(tmp, f"optimizer-{rank:05d}-of-{world:05d}.pt"))
        else:
            save_torch_model(unwrap(model), architecture, tmp)
            torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER))
        if rank == 0:
            with open(os.path.join(tmp, STATE), "w") as f:
                json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _local_optimizer_state(optimizer) -> dict:
    """The optimizer state with DTensors replaced by their local shards: plain tensors that
    ``torch.load(weights_only=True)`` reads back, for the same rank of a same-size group."""
    from torch.distributed.tensor import DTensor

    def local(v):
        return v.to_local() if isinstance(v, DTensor) else v

    sd = optimizer.state_dict()
    return {"state": {k: {n: local(v) for n, v in st.items()} for k, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def as_dtensors(optimizer, saved: dict) -> dict:
    """Undo ``_local_optimizer_state``: each saved local shard becomes a DTensor placed like its parameter."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for key, st in saved["state"].items():
        param = params[int(key)]
        state[key] = {n: DTensor.from_local(v.to(param.device), device_mesh=param.device_mesh,
                                            placements=param.placements, shape=param.shape, stride=param.stride())
                      if isinstance(param, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0 else v
                      for n, v in st.items()}
    return {"state": state, "param_groups": saved["param_groups"]}
