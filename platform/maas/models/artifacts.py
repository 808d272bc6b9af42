"""Saving and loading torch models as safetensors + JSON: no pickle anywhere on the load path."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from maas.exceptions import MaasError
from maas.models.builders import build_model

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
SHARDS = "shards.json"  # a sharded (FSDP) checkpoint: per-rank safetensors + this index


def save_torch_model(model: nn.Module, config: dict, folder: str | Path) -> dict[str, Path]:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; returns {artifact name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return {WEIGHTS: folder / WEIGHTS, CONFIG: folder / CONFIG}


def load_torch_model(folder: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` strictly (eval mode, CPU)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise MaasError(f"{folder}: {CONFIG} not found; is this a maas torch artifact?") from None
    model = build_model(config)
    try:
        state = load_file(str(folder / WEIGHTS)) if (folder / WEIGHTS).is_file() or not (folder / SHARDS).is_file() \
            else load_sharded_state(folder)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, FileNotFoundError, KeyError, ValueError) as exc:
        raise MaasError(f"{folder}: cannot load {WEIGHTS}: {exc}") from None
    return model.eval(), config


def shard_file(rank: int, world: int) -> str:
    return f"model-{rank:05d}-of-{world:05d}.safetensors"


def save_shard(model: nn.Module, config: dict, folder: str | Path, rank: int, world: int) -> None:
    """Write this rank's part of an FSDP2-sharded model: its local shard of every sharded parameter (FSDP2
    shards dim 0 like ``torch.chunk``) and, on rank 0, the replicated tensors, ``model.json`` and the index.
    No rank gathers the whole model, so a model too big for one worker's memory still checkpoints."""
    from torch.distributed.tensor import DTensor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    local, index = {}, {}
    for name, t in model.state_dict().items():
        sharded = isinstance(t, DTensor)
        index[name] = {"shape": list(t.shape), "sharded": sharded}
        if sharded:
            local[name] = t.to_local().detach().cpu().contiguous()
        elif rank == 0:
            local[name] = t.detach().cpu().contiguous()
    save_file(local, str(folder / shard_file(rank, world)))
    if rank == 0:
        (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        (folder / SHARDS).write_text(json.dumps({"world_size": world, "tensors": index}, indent=2))


def load_sharded_state(folder: str | Path) -> dict:
    """The full state dict of a sharded checkpoint: shards concatenated along dim 0 in rank order."""
    folder = Path(folder)
    index = json.loads((folder / SHARDS).read_text())
    world = int(index["world_size"])
    missing = [shard_file(r, world) for r in range(world) if not (folder / shard_file(r, world)).is_file()]
    if missing:
        raise FileNotFoundError(f"sharded checkpoint is missing {', '.join(missing)}")
    parts = [load_file(str(folder / shard_file(r, world))) for r in range(world)]
    state = {}
    for name, meta in index["tensors"].items():
        if meta["sharded"]:
            full = torch.cat([p[name] for p in parts if name in p and p[name].numel()], dim=0) \
                if any(name in p and p[name].numel() for p in parts) else torch.empty(0)
        else:
            full = parts[0][name]
        if list(full.shape) != meta["shape"]:
            raise ValueError(f"tensor {name}: shards assemble to {list(full.shape)}, index says {meta['shape']}")
        state[name] = full
    return state


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP/FSDP wrappers."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def quiet_export():
    """Silence ONNX export and torchao chatter: warnings, logger lines below ERROR, prints."""
    names = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "torchao", "torch.utils._pytree")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, input_dim: int, path: str | Path) -> Path:
    """Export a [batch, input_dim] -> [batch, classes] model to ONNX with a dynamic batch axis."""
    path = Path(path)
    model = unwrap(model).eval()
    example = torch.zeros(2, input_dim)
    # the TorchScript exporter: the same graph as the dynamo exporter's for these models (Sub, Div, Gemm, Relu),
    # in 0.05 s against 6-8 s for dynamo's first export in a process (2 s after), which every pipeline run
    # paid (docs/design/compression.md)
    with quiet_export():
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False, verbose=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path
