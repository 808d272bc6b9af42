import numpy as np
import pytest
import torch

from maas.compress import check_accuracy_gate, compress_model, evaluate_classifier
from maas.exceptions import MaasError
from maas.models import build_model, load_predictor
from maas.models.artifacts import export_onnx, load_torch_model, save_torch_model
from maas.models.predictor import OnnxPredictor, TorchPredictor

CONFIG = {"arch": "mlp", "input_dim": 8, "num_classes": 3, "hidden_sizes": [16], "dropout": 0.0}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model({**CONFIG, "mean": [1.0] * 8, "std": [2.0] * 8}).eval()


def test_standardize_buffers_are_part_of_the_weights(model):
    state = model.state_dict()
    assert torch.equal(state["0.mean"], torch.ones(8)) and torch.equal(state["0.std"], torch.full((8,), 2.0))


def test_safetensors_round_trip_gives_identical_outputs(model, tmp_path):
    files = save_torch_model(model, CONFIG, tmp_path)
    assert set(files) == {"model.safetensors", "model.json"}
    loaded, config = load_torch_model(tmp_path)
    x = torch.randn(5, 8)
    assert config == CONFIG
    assert torch.equal(model(x), loaded(x))


def test_load_refuses_mismatched_weights(model, tmp_path):
    save_torch_model(model, {**CONFIG, "hidden_sizes": [32]}, tmp_path)  # config does not match the weights
    with pytest.raises(MaasError, match="cannot load"):
        load_torch_model(tmp_path)
    with pytest.raises(MaasError, match="unknown model arch"):
        build_model({"arch": "transformer-xxl"})


def test_onnx_export_and_int8_quantization_agree_with_torch(tmp_path):
    torch.manual_seed(0)  # wide enough for its weights, not the graph's names, to decide the file sizes
    model = build_model({**CONFIG, "hidden_sizes": [256], "mean": [1.0] * 8, "std": [2.0] * 8}).eval()
    onnx_path = export_onnx(model, 8, tmp_path / "model.onnx")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32) * 3 + 1
    torch_logits = TorchPredictor(model)(x)
    np.testing.assert_allclose(OnnxPredictor(onnx_path)(x), torch_logits, rtol=1e-4, atol=1e-5)
    (variant,) = compress_model(["int8_dynamic"], onnx_path, tmp_path)
    q = variant.files["model.onnx"]
    assert q.stat().st_size < onnx_path.stat().st_size / 1.5  # 8-bit weights, plus a scale per output channel
    q_logits = load_predictor(q.parent, "onnxruntime", "classify")(x)
    assert (q_logits.argmax(1) == torch_logits.argmax(1)).mean() >= 0.9
    assert np.abs(q_logits - torch_logits).max() < 0.5 * np.abs(torch_logits).max()
    # ONNX Runtime on this CPU computes what the quantized graph says (ONNX's reference evaluator): 8-bit
    # weights saturated its int8 kernel on AVX2 CPUs without VNNI (0.37 off; 0.013 with the 7-bit weights made)
    import onnx
    from onnx.reference import ReferenceEvaluator

    reference = ReferenceEvaluator(onnx.load(q)).run(None, {"input": x})[0]
    assert np.abs(q_logits - reference).max() < 0.05 * np.abs(torch_logits).max()


def test_rowwise_int8_answers_a_row_the_same_in_any_batch_and_close_to_fp32(tmp_path):
    """int8_rowwise: every Linear (an ONNX Gemm here) an int8 GEMM on rows quantized one by one, so a row's
    logits are bit for bit the same alone and in any batch (int8_dynamic's one scale per call moves them)."""
    import onnx

    torch.manual_seed(0)
    model = build_model({**CONFIG, "hidden_sizes": [256, 64], "mean": [1.0] * 8, "std": [2.0] * 8}).eval()
    onnx_path = export_onnx(model, 8, tmp_path / "model.onnx")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32) * 3 + 1
    x[5] *= 40  # one loud row: a per-call scale coarsens every other row's steps
    torch_logits = TorchPredictor(model)(x)
    row, dyn = compress_model(["int8_rowwise", "int8_dynamic"], onnx_path, tmp_path)
    graph = onnx.load(row.files["model.onnx"]).graph
    weights = {i.name for i in graph.initializer}
    assert [n.op_type for n in graph.node].count("MatMulIntegerToFloat") == 3  # 8 -> 256 -> 64 -> 3
    assert not [n for n in graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in weights]
    for variant, invariant in ((row, True), (dyn, False)):
        predict = load_predictor(variant.files["model.onnx"].parent, "onnxruntime", "classify")
        batched, alone = predict(x), np.concatenate([predict(x[i:i + 1]) for i in range(len(x))])
        assert np.array_equal(batched, alone) == invariant, variant.method
    logits = load_predictor(row.files["model.onnx"].parent, "onnxruntime", "classify")(x)
    assert (logits.argmax(1) == torch_logits.argmax(1)).mean() >= 0.95
    assert np.abs(logits - torch_logits).max() < 0.05 * np.abs(torch_logits).max()
    assert row.files["model.onnx"].stat().st_size < onnx_path.stat().st_size / 2.5


def test_evaluate_reports_accuracy_size_and_latency(model):
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    predict = TorchPredictor(model)
    y = predict(x).argmax(1)
    m = evaluate_classifier(predict, x, y, size_bytes=1234, runs=20)
    assert m["test_accuracy"] == 1.0 and m["size_bytes"] == 1234
    assert 0 < m["latency_ms_p50"] <= m["latency_ms_p99"]
    assert 0 < m["throughput_rows_s_b64_min"] <= m["throughput_rows_s_b64"] <= m["throughput_rows_s_b64_max"]


def test_quality_gate():
    ok, why = check_accuracy_gate({"test_accuracy": 0.97}, {"test_accuracy": 0.965}, 0.01)
    assert ok and "within" in why
    ok, why = check_accuracy_gate({"test_accuracy": 0.97}, {"test_accuracy": 0.95}, 0.01)
    assert not ok and "2.00 points below" in why
