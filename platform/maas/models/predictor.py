"""Inference on a loaded artifact: the same interface whether torch or ONNX Runtime runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from maas.exceptions import MaasError
from maas.models.artifacts import load_torch_model


class Predictor(Protocol):
    runtime: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, F] -> logits float32 [N, C]."""


class TorchPredictor:
    runtime = "torch"

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()

    @classmethod
    def from_dir(cls, folder: str | Path) -> "TorchPredictor":
        model, _ = load_torch_model(folder)
        return cls(model)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


class OnnxPredictor:
    runtime = "onnxruntime"

    def __init__(self, path: str | Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def load_predictor(folder: str | Path, runtime: str) -> Predictor:
    """Load the artifact in ``folder`` for ``runtime`` ('torch' or 'onnxruntime')."""
    folder = Path(folder)
    if runtime == "torch":
        return TorchPredictor.from_dir(folder)
    if runtime == "onnxruntime":
        return OnnxPredictor(folder / "model.onnx")
    raise MaasError(f"unknown runtime {runtime!r}: expected 'torch' or 'onnxruntime'")
