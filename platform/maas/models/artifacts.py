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
from maas.models import build_model

WEIGHTS = "model.safetensors"
CONFIG = "model.json"


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
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except (RuntimeError, FileNotFoundError) as exc:
        raise MaasError(f"{folder}: cannot load {WEIGHTS}: {exc}") from None
    return model.eval(), config


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP/FSDP wrappers."""
    return getattr(model, "module", model)


def export_onnx(model: nn.Module, input_dim: int, path: str | Path) -> Path:
    """Export a [batch, input_dim] -> [batch, classes] model to ONNX with a dynamic batch axis."""
    path = Path(path)
    model = unwrap(model).eval()
    example = torch.zeros(2, input_dim)
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return path
