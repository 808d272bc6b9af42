"""Compression stage: variants of a trained model, each measured against its parent and gated (the classifier's
ONNX int8 here; the encoder suite's step chains in ``encoder_variants``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maas.compress.evaluate import evaluate_classifier
from maas.compress.gate import check_accuracy_gate, check_embedding_gate
from maas.compress.quantize import quantize_int8_dynamic, quantize_int8_rowwise
from maas.exceptions import CompressionError


@dataclass
class Variant:
    method: str
    runtime: str
    files: dict[str, Path]


# a classifier's compression methods: each an int8 graph of the parent's fp32 ONNX export
QUANTIZERS = {"int8_dynamic": quantize_int8_dynamic, "int8_rowwise": quantize_int8_rowwise}


def compress_model(methods: list[str], onnx_fp32: Path, workdir: Path) -> list[Variant]:
    """Produce one variant per method from the parent's fp32 ONNX export."""
    variants = []
    for method in methods:
        folder = Path(workdir) / method
        folder.mkdir(parents=True, exist_ok=True)
        quantize = QUANTIZERS.get(method)
        if quantize is None:
            raise CompressionError(f"unknown compression method {method!r}")
        variants.append(Variant(method, "onnxruntime", {"model.onnx": quantize(onnx_fp32, folder / "model.onnx")}))
    return variants


__all__ = ["Variant", "check_accuracy_gate", "check_embedding_gate", "compress_model", "evaluate_classifier",
           "quantize_int8_dynamic", "quantize_int8_rowwise"]
