"""int8 dynamic quantization through ONNX Runtime (the maintained CPU path; torch.ao is deprecated)."""

from __future__ import annotations

import logging
from pathlib import Path

from maas.exceptions import CompressionError


def quantize_int8_dynamic(onnx_fp32: str | Path, out_path: str | Path, per_channel: bool = True) -> Path:
    """Weights to int8 (per output channel), activations quantized on the fly at run time.

    Raises:
        CompressionError: ONNX Runtime's quantization tools are missing or reject the graph.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise CompressionError(f"int8_dynamic needs onnxruntime: pip install onnxruntime ({exc})") from None
    out_path = Path(out_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing hint on the root logger for every call
    try:
        quantize_dynamic(str(onnx_fp32), str(out_path), per_channel=per_channel, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise CompressionError(f"int8_dynamic quantization of {onnx_fp32} failed: {exc}") from None
    finally:
        root.setLevel(level)
    return out_path
