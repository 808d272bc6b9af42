"""Load-time quantization recipes: a ``torchao`` artifact is fp32 safetensors plus the recipe name in its
``model.json`` (``quantize``), applied when the model is loaded (``maas.models.predictor``) and when the
compression suite measures it (``maas.compress.encoder_ops``)."""

from __future__ import annotations

import torch
from torch import nn

from maas.exceptions import CompressionError
from maas.models.artifacts import quiet_export as _quiet

TORCHAO = {"torchao_int8_weight", "torchao_w8a8", "torchao_int4_weight"}


def torchao_config(step: str):
    """The torchao quantization config for a final step name."""
    with _quiet():
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerGroup
    if step == "torchao_int8_weight":
        return Int8WeightOnlyConfig()
    if step == "torchao_w8a8":
        return Int8DynamicActivationInt8WeightConfig()
    if step == "torchao_int4_weight":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    raise CompressionError(f"unknown torchao step {step!r}; known: {sorted(TORCHAO)}")


def apply_torchao(model: nn.Module, step: str) -> nn.Module:
    """Quantize ``model``'s Linear layers with torchao (CPU or GPU); returns the quantized model.

    ``torch_ao_dynamic_int8`` (the deprecated ``torch.ao.quantization.quantize_dynamic``, per-tensor int8) is
    accepted for the benchmark's baseline column only; specs cannot ask for it."""
    if step == "torch_ao_dynamic_int8":
        with _quiet():
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    try:
        with _quiet():
            from torchao.quantization import quantize_
    except ImportError as exc:
        raise CompressionError(f"{step} needs torchao: pip install 'maas[text]' ({exc})") from None
    quantize_(model, torchao_config(step))
    return model
