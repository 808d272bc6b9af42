"""Inference on a loaded artifact: the same interface whether torch or ONNX Runtime runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maas.exceptions import MaasError
from maas.models.artifacts import load_torch_model


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


class EncoderPredictor:
    """A sentence encoder artifact (any runtime) as ``texts -> float32 [N, dim]`` unit vectors, or a text
    classifier's as ``texts -> logits [N, classes]``.

    The folder holds ``tokenizer.json`` and ``model.json`` (max_length, dtype, quantize recipe) beside the
    weights: ``model.safetensors`` for the torch and torchao runtimes, ``model.onnx`` for ONNX Runtime."""

    def __init__(self, folder: str | Path, runtime: str, threads: int = 0):
        import json

        from maas.models.encoder import TOKENIZER, EncoderTokenizer

        folder = Path(folder)
        self.runtime = runtime
        self.config = json.loads((folder / "model.json").read_text())
        self.tokenizer = EncoderTokenizer(folder / TOKENIZER, self.config.get("max_length", 256))
        # a sentence encoder answers unit vectors [N, hidden]; a text classifier (same folder layout) logits [N, C]
        self.dim = int(self.config["num_classes"] if self.config.get("arch") == "text_classifier"
                       else self.config["hidden_size"])
        if threads:
            torch.set_num_threads(threads)
        if runtime == "onnxruntime":
            self._onnx = OnnxPredictor(folder / "model.onnx", intra_op_threads=threads)
            self._run = lambda ids, mask: self._onnx.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            return
        model, _ = load_torch_model(folder)
        dtype = self.config.get("dtype", "float32")
        # on a replica given a GPU: plain torch weights of any dtype, and half-precision torchao ones
        cuda = torch.cuda.is_available() and (runtime == "torch" or dtype != "float32")
        self.device = torch.device("cuda" if cuda else "cpu")
        model = model.to(self.device, getattr(torch, dtype))
        if runtime == "torchao":
            from maas.models.quantized import apply_torchao

            model = apply_torchao(model, self.config["quantize"])
        elif runtime != "torch":
            raise MaasError(f"unknown encoder runtime {runtime!r}: expected torch, torchao or onnxruntime")
        self.model = model.eval()

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out = self.model(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
            return out.float().cpu().numpy()

        self._run = run

    def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(ids, mask), dtype=np.float32)

    def __call__(self, texts) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_ids(*self.tokenizer(texts))
