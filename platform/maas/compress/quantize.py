"""int8 quantization through ONNX Runtime (the maintained CPU path; torch.ao is deprecated)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from maas.exceptions import CompressionError


def quantize_int8_dynamic(onnx_fp32: str | Path, out_path: str | Path, per_channel: bool = True) -> Path:
    """Weights to int8 (per output channel, 7 bits of range), activations quantized on the fly at run time.

    ``reduce_range``: ONNX Runtime multiplies uint8 activations by int8 weights with AVX2's VPMADDUBSW on x86
    CPUs without VNNI, which sums pairs of products in 16 bits and saturates when both are large; 7-bit
    weights keep every pair sum in range. Measured on an AVX2-only AMD EPYC: with 8-bit weights a small MLP's
    logits were off by 0.37 (argmax agreement with fp32 0.89; ONNX's reference evaluator of the same graph:
    0.014), with 7 bits by 0.013 (0.98). A version is made once and may be served on any CPU, so always.

    Raises:
        CompressionError: ONNX Runtime's quantization tools are missing or reject the graph.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise CompressionError(f"int8_dynamic needs onnxruntime: pip install onnxruntime ({exc})") from None
    out_path = Path(out_path)
    with _quiet_ort():
        try:
            quantize_dynamic(str(onnx_fp32), str(out_path), per_channel=per_channel, weight_type=QuantType.QInt8,
                             reduce_range=True)
        except Exception as exc:
            raise CompressionError(f"int8_dynamic quantization of {onnx_fp32} failed: {exc}") from None
    return out_path


def quantize_int8_rowwise(onnx_fp32: str | Path, out_path: str | Path) -> Path:
    """Batch-invariant int8 at per-tensor speed: every MatMul or Gemm with a constant 2-D weight becomes an int8 GEMM
    whose activations are quantized **per row** at run time (``_RowwiseInt8``), and the embedding table int8.

    Unlike ``quantize_int8_dynamic`` (one activation scale for the whole input tensor, so a row's result
    depends on the other rows and the padding in its batch), a row's scale comes from that row alone and the
    product is integer arithmetic: the same text gives the same vector alone or in any batch. It runs on the
    same u8 x s8 kernels as the per-tensor graph (``MatMulIntegerToFloat``); ONNX Runtime's ``MatMulNBits``
    (int8 in blocks of 32, what this was before) is tuned for one-row decoding and ran at 1.3x fp32 here,
    this graph at 2.1x (docs/design/encoders.md has the measurements).

    Raises:
        CompressionError: ONNX Runtime's quantization tools are missing or reject the graph.
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise CompressionError(f"onnx_int8 needs onnxruntime and onnx: pip install onnxruntime ({exc})") from None
    out_path = Path(out_path)
    with _quiet_ort():
        try:
            model = _RowwiseInt8(onnx.load(str(onnx_fp32))).apply()
            staged = out_path.with_suffix(".matmul.onnx")
            onnx.save(model, str(staged))
            # the embedding lookup: a static table, so a per-tensor scale keeps rows independent
            quantize_dynamic(str(staged), str(out_path), op_types_to_quantize=["Gather"],
                             weight_type=QuantType.QUInt8)
            staged.unlink()
        except Exception as exc:
            raise CompressionError(f"row-wise int8 quantization of {onnx_fp32} failed: {exc}") from None
    return out_path


class _RowwiseInt8:
    """The graph rewrite of ``quantize_int8_rowwise``. For ``y = x @ W`` (``x``: [..., K], ``W``: [K, N]; a
    Gemm's bias added after):

    - ``W`` -> int8 with a scale per output column, 7 bits of range (``quantize_int8_dynamic``'s
      ``reduce_range`` reason: AVX2's u8 x s8 pair sums saturate 16 bits with 8-bit weights);
    - ``x`` -> [M, K] rows, each row's scale ``s = max|row| / 127``, ``QuantizeLinear`` along axis 0 to
      uint8 around 128 (one pass). Projections of one input (attention's Q, K and V) share it;
    - ``MatMulIntegerToFloat`` (ONNX Runtime's fused int8 GEMM: int32 sums times the column scales), times
      ``s`` per row, reshaped back to [..., N]. Integer sums are exact, so a row's result cannot depend on
      the rows beside it."""

    def __init__(self, model):
        self.model = model
        self.weights = {i.name: i for i in model.graph.initializer}
        self.consts: dict = {}
        self.nodes: list = []
        self.quantized: dict = {}  # (input name, K) -> node-name prefix of its quantization

    def apply(self):
        from onnx import helper

        graph = self.model.graph
        for node in graph.node:
            if not self._rewrite(node):
                self.nodes.append(node)
        used = {name for node in self.nodes for name in node.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept + [c for name, c in self.consts.items() if name in used])
        del graph.node[:]
        graph.node.extend(self.nodes)
        if not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        return self.model

    def _const(self, name: str, value) -> str:
        import numpy as np
        from onnx import numpy_helper

        if name not in self.consts:
            self.consts[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def _weight(self, node):
        """(input, W as [K, N], bias name or None) of a MatMul or a plain Gemm (a Linear layer) with a constant
        2-D weight; None for any other node."""
        import numpy as np
        from onnx import helper, numpy_helper

        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in self.weights or \
                node.input[0] in self.weights:
            return None
        w = numpy_helper.to_array(self.weights[node.input[1]]).astype(np.float32)
        if w.ndim != 2:
            return None
        if node.op_type == "MatMul":
            return node.input[0], w, None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or (bias and attrs.get("beta", 1.0) != 1.0):
            return None
        return node.input[0], (w.T if attrs.get("transB", 0) else w), bias

    def _rewrite(self, node) -> bool:
        import numpy as np
        from onnx import helper

        found = self._weight(node)
        if found is None:
            return False
        x, w, bias = found
        (k, n), name = w.shape, f"{node.input[1]}_rowq8"
        scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / 63).astype(np.float32)
        w_q = self._const(name, np.clip(np.round(w / scale), -63, 63).astype(np.int8))
        w_s = self._const(f"{name}_scale", scale)
        q = self._quantize_rows(x, k)
        out = f"{node.output[0]}_rowq8"
        y = f"{out}_biasless" if bias else node.output[0]
        self.nodes += [
            helper.make_node("MatMulIntegerToFloat", [f"{q}_xq", w_q, self._const("rowq8_one", np.float32(1)), w_s,
                                                      self._const("rowq8_zp_u8", np.uint8(128)),
                                                      self._const("rowq8_zp_s8", np.int8(0))],
                             [f"{out}_y"], domain="com.microsoft"),
            helper.make_node("Mul", [f"{out}_y", f"{q}_scale_col"], [f"{out}_ys"]),
            helper.make_node("Concat", [f"{q}_lead", self._const(f"rowq8_n{n}", np.array([n], np.int64))],
                             [f"{out}_shape"], axis=0),
            helper.make_node("Reshape", [f"{out}_ys", f"{out}_shape"], [y])]
        if bias:
            self.nodes.append(helper.make_node("Add", [y, bias], [node.output[0]]))
        return True

    def _quantize_rows(self, x: str, k: int) -> str:
        """The nodes that quantize ``x``'s rows (once per input): ``{q}_xq`` [M, K] uint8, ``{q}_scale_col``
        [M, 1] and ``{q}_lead`` (``x``'s shape but the last)."""
        import numpy as np
        from onnx import helper

        if (x, k) in self.quantized:
            return self.quantized[(x, k)]
        q = self.quantized[(x, k)] = f"rowq8_{len(self.quantized)}"
        self.nodes += [
            helper.make_node("Reshape", [x, self._const(f"rowq8_k{k}", np.array([-1, k], np.int64))], [f"{q}_x2"]),
            helper.make_node("ReduceMax", [f"{q}_x2"], [f"{q}_max"], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", [f"{q}_x2"], [f"{q}_min"], axes=[1], keepdims=0),
            helper.make_node("Neg", [f"{q}_min"], [f"{q}_negmin"]),
            helper.make_node("Max", [f"{q}_max", f"{q}_negmin"], [f"{q}_absmax"]),
            helper.make_node("Mul", [f"{q}_absmax", self._const("rowq8_inv127", np.float32(1 / 127))], [f"{q}_s0"]),
            helper.make_node("Max", [f"{q}_s0", self._const("rowq8_eps", np.float32(1e-12))], [f"{q}_scale"]),
            helper.make_node("Shape", [f"{q}_scale"], [f"{q}_m"]),
            helper.make_node("Expand", [self._const("rowq8_zp_u8", np.uint8(128)), f"{q}_m"], [f"{q}_zp"]),
            helper.make_node("QuantizeLinear", [f"{q}_x2", f"{q}_scale", f"{q}_zp"], [f"{q}_xq"], axis=0),
            helper.make_node("Reshape", [f"{q}_scale", self._const("rowq8_col", np.array([-1, 1], np.int64))],
                             [f"{q}_scale_col"]),
            helper.make_node("Shape", [x], [f"{q}_shape"]),
            helper.make_node("Slice", [f"{q}_shape", self._const("rowq8_0", np.array([0], np.int64)),
                                       self._const("rowq8_m1", np.array([-1], np.int64))], [f"{q}_lead"])]
        return q


@contextlib.contextmanager
def _quiet_ort():
    """ORT's quantizers log a pre-processing hint and a line per skipped node on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    q_level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        quantizer_log.setLevel(q_level)
