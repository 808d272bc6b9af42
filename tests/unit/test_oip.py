import json
import re

import numpy as np
import pytest

from maas.models import classifier_signature
from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip.codec import classifier_outputs, model_metadata, parse_infer_request

SIG = classifier_signature(4, [0, 1, 2])


def body(**tensor):
    t = {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}
    t.update(tensor)
    return json.dumps({"inputs": [t]}).encode()


def test_flat_and_nested_data_parse_to_the_same_array():
    flat, _, _ = parse_infer_request(body(), SIG)
    nested, _, _ = parse_infer_request(body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), SIG)
    assert flat.dtype == np.float32 and flat.shape == (2, 4)
    np.testing.assert_array_equal(flat, nested)


def test_other_numeric_datatypes_are_cast_and_single_row_is_batched():
    x, _, _ = parse_infer_request(body(datatype="INT64", shape=[4], data=[1, 2, 3, 4]), SIG)
    assert x.shape == (1, 4) and x.dtype == np.float32


def test_a_flat_list_of_ints_and_floats_parses_like_the_standard_path():
    x, _, _ = parse_infer_request(body(data=[0, 1.5, 2, 3, 4, 5, 6, 7.25]), SIG)
    assert x.dtype == np.float32 and x.tolist() == [[0, 1.5, 2, 3], [4, 5, 6, 7.25]]
    big, _, _ = parse_infer_request(body(datatype="UINT64", shape=[4], data=[2 ** 64 - 1, 0, 1, 2]), SIG)
    assert big.shape == (1, 4)


def test_id_and_requested_outputs():
    raw = json.loads(body())
    raw.update(id="req-1", outputs=[{"name": "label"}], parameters={"x": 1})
    _, rid, wanted = parse_infer_request(json.dumps(raw).encode(), SIG)
    assert rid == "req-1" and wanted == ["label"]


@pytest.mark.parametrize("payload,fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"inputs": []}', "non-empty list"),
    (body(name="x"), "takes 'input'"),
    (body(shape=[2, 3]), "needs 6 values"),
    (body(shape=[4, 2]), "does not match the model's [-1, 4]"),
    (body(datatype="BYTES"), "not accepted"),
    (body(data=["a"] * 8), "only numbers"),
    (body(data=[None] * 8), "only numbers"),
    (body(shape="2x4"), "'shape' must be"),
    (body(datatype=["FP32"]), "not accepted"),
    (body(name=["input"]), "string 'name'"),
    (json.dumps({"inputs": [{"name": {}, "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}).encode(),
     "string 'name'"),
    (body(datatype="UINT8", data=[300] * 8), "do not fit"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]}).encode(), "'data' is missing"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4],
                             "data": [1e308 * 10, 0, 0, 0]}]}).encode(), "finite"),
    # the fast JSON path (orjson, a flat list checked in C) refuses what the standard path refuses
    (body(data=[True] * 8), "only numbers"),
    (body(datatype="INT64", data=[1.5] * 8), "takes integers"),
    (body(datatype="INT64", shape=[1, 4], data=[0, 0, 0, 2 ** 70]), "takes integers"),  # past 64 bits
    (body(datatype="UINT8", shape=[1, 4], data=[[0, 0, 0, 300]]), "do not fit"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 0, 0, 0]}]}', "finite"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 1e999]}]}', "finite"),
    (b'{"inputs": \xff\xfe}', "not valid JSON"),
])
def test_client_mistakes_are_400_with_a_clear_message(payload, fragment):
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(payload, SIG)
    assert info.value.status == 400
    assert fragment in info.value.message


def test_unknown_requested_output_is_400():
    raw = json.loads(body())
    raw["outputs"] = [{"name": "embedding"}]
    with pytest.raises(ProtocolError, match="unknown output"):
        parse_infer_request(json.dumps(raw).encode(), SIG)


def test_classifier_outputs_map_argmax_to_class_values_and_probabilities_sum_to_one():
    logits = np.array([[0.0, 5.0, 1.0], [9.0, 0.0, 0.0]], dtype=np.float32)
    sig = classifier_signature(4, [3, 7, 9])
    out = {o["name"]: o for o in classifier_outputs(logits, sig, None)}
    assert out["label"]["data"] == [7, 3] and out["label"]["datatype"] == "INT64"
    probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    only = classifier_outputs(logits, sig, ["probabilities"])
    assert [o["name"] for o in only] == ["probabilities"]
    assert classifier_signature(2, ["cat", "dog"])["outputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize("datatype,data", [("BOOL", [True, False] * 4), ("INT8", [-3] * 8), ("UINT16", [7] * 8),
                                           ("INT32", [1] * 8), ("FP16", [0.5] * 8), ("FP64", [1e-3] * 8)])
def test_every_numeric_datatype_is_accepted(datatype, data):
    x, _, _ = parse_infer_request(body(datatype=datatype, data=data), SIG)
    assert x.shape == (2, 4) and x.dtype == np.float32


def test_hostile_nesting_is_a_400_not_a_crash():
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": {deep}}}]}}'
                            .encode(), SIG)
    assert info.value.status == 400
    with pytest.raises(ProtocolError, match="nested deeper"):
        parse_infer_request(body(shape=[8], data=[[[1]]] * 8), SIG)


def test_raw_columns_go_through_the_saved_encoders():
    enc = {"color": {"kind": "onehot", "categories": ["blue", "green", "red"]},
           "size": {"kind": "ordinal", "categories": ["L", "M", "S"]}}
    sig = classifier_signature(5, [0, 1], features=["age", "color=blue", "color=green", "color=red", "size"],
                               raw_features=["age", "color", "size"], encoders=enc)
    body = json.dumps({"inputs": [
        {"name": "color", "datatype": "BYTES", "shape": [3], "data": ["red", "blue", "purple"]},
        {"name": "age", "datatype": "INT64", "shape": [3], "data": [30, 41, 52]},
        {"name": "size", "datatype": "BYTES", "shape": [3, 1], "data": [["S"], ["XL"], ["L"]]}]})
    x, _, _ = parse_infer_request(body.encode(), sig)
    np.testing.assert_array_equal(x, [[30, 0, 0, 1, 2], [41, 1, 0, 0, -1], [52, 0, 0, 0, 0]])
    # the encoded matrix is still accepted as 'input'
    x2, _, _ = parse_infer_request(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5],
                                                           "data": [1, 0, 0, 1, 2]}]}).encode(), sig)
    assert x2.shape == (1, 5)
    for inputs, fragment in [
        ([{"name": "age", "datatype": "FP32", "shape": [1], "data": [1]}], "missing: ['color', 'size']"),
        ([{"name": "age", "datatype": "FP32", "shape": [1], "data": [1]},
          {"name": "color", "datatype": "FP32", "shape": [1], "data": [1]},
          {"name": "size", "datatype": "BYTES", "shape": [1], "data": ["S"]}], "must be BYTES"),
        ([{"name": "age", "datatype": "FP32", "shape": [2], "data": [1, 2]},
          {"name": "color", "datatype": "BYTES", "shape": [1], "data": ["red"]},
          {"name": "size", "datatype": "BYTES", "shape": [1], "data": ["S"]}], "has 1 rows"),
        ([{"name": "age", "datatype": "FP32", "shape": [1], "data": [1]},
          {"name": "color", "datatype": "BYTES", "shape": [1], "data": [7]},
          {"name": "size", "datatype": "BYTES", "shape": [1], "data": ["S"]}], "1 strings")]:
        with pytest.raises(ProtocolError, match=re.escape(fragment)):
            parse_infer_request(json.dumps({"inputs": inputs}).encode(), sig)
    meta = model_metadata("m", 1, "onnxruntime", sig)
    assert [r["name"] for r in meta["parameters"]["raw_inputs"]] == ["age", "color", "size"]
