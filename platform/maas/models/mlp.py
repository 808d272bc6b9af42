"""A multilayer perceptron classifier with its input standardisation built in."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on the train split; stored as buffers, so they travel with
    the weights into checkpoints, safetensors and ONNX, and serving applies exactly the training transform."""

    def __init__(self, num_features: int, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features) if mean is None
                             else torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.ones(num_features) if std is None
                             else torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_mlp(input_dim: int, num_classes: int, hidden_sizes: Sequence[int] = (128, 64), dropout: float = 0.1,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> nn.Module:
    """Standardize -> [Linear -> ReLU -> Dropout] * len(hidden_sizes) -> Linear (logits)."""
    layers: list[nn.Module] = [Standardize(input_dim, mean, std)]
    width = input_dim
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def classifier_signature(num_features: int, classes: list, features: Optional[list[str]] = None,
                         raw_features: Optional[list[str]] = None, encoders: Optional[dict] = None) -> dict:
    """The registry signature of a maas classifier: what OIP metadata announces and infer checks against.

    With ``encoders`` (categorical columns encoded at training), the endpoint also takes one tensor per raw
    column (``raw_features``: BYTES for encoded ones, FP32 for numbers) and applies the same encoders."""
    label_type = "INT64" if all(isinstance(c, int) for c in classes) else \
        "FP64" if all(isinstance(c, (int, float)) for c in classes) else "BYTES"
    sig = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, num_features]}],
           "outputs": [{"name": "label", "datatype": label_type, "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]}],
           "classes": list(classes)}
    if features is not None:
        sig["features"] = list(features)
    if encoders:
        sig["encoders"] = encoders
        sig["raw_inputs"] = [{"name": f, "datatype": "BYTES" if f in encoders else "FP32", "shape": [-1]}
                             for f in (raw_features or [])]
    return sig
