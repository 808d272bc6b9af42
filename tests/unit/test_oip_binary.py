"""The OIP binary tensor extension, both ways, as tritonclient encodes it (no server: the client's own request
builder and response parser against maas's pure functions)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip.binary import encode_response, request_object, wants_binary
from maas.serve.protocols.oip.codec import parse_infer_request, parse_text_infer_request

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
             "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                         {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}], "classes": [0, 1]}


def _body(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL"])
def test_numeric_binary_inputs_decode_to_the_same_array_as_json(datatype):
    from maas.serve.protocols.oip.codec import NUMERIC

    values = np.array([[1, 0, 1], [0, 1, 1]]).astype(NUMERIC[datatype])
    body, n = _body({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3],
                                 "parameters": {"binary_data_size": values.nbytes}}]}, values.astype(
        values.dtype.newbyteorder("<")).tobytes())
    x, _, _ = parse_infer_request(request_object(body, n, "inputs"), SIGNATURE)
    as_json = parse_infer_request(json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3],
                                                          "data": values.tolist()}]}).encode(), SIGNATURE)[0]
    assert x.dtype == np.float32 and np.array_equal(x, as_json)


def test_bytes_inputs_are_length_prefixed_utf8():
    texts = ["Ray Serve hosts models.", "naïve café 🙂", ""]
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    body, n = _body({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                                 "parameters": {"binary_data_size": len(raw)}}]}, raw)
    req = request_object(body, n, "inputs")
    assert req["inputs"][0]["data"] == texts
    with pytest.raises(ProtocolError, match="empty string"):  # the text route's own checks still apply
        parse_text_infer_request(req, {"inputs": [{"name": "text"}]})
    good = _body({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                              "parameters": {"binary_data_size": len(raw) - 4}}]}, raw[:-4])
    assert parse_text_infer_request(request_object(*good, "inputs"), {"inputs": [{"name": "text"}]})[0] == texts[:2]


@pytest.mark.parametrize("header, binary, n, fragment", [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]},
     b"\x00" * 8, None, "does not fit the 8 binary bytes"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 10}}]},
     b"\x00" * 10, None, "not a whole number of FP32"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}}]},
     b"\x00" * 8, None, "needs 3 values"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}]},
     b"\x00" * 16, None, "4 bytes after the header belong to no input"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3],
                  "parameters": {"binary_data_size": 12}}]}, b"\x00" * 12, None, "not both"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
     b"\x09\x00\x00\x00ab", None, "claims 9 bytes"),
    ({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
     b"\x02\x00\x00\x00\xff\xfe", None, "not UTF-8"),
    ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "parameters": {"binary_data_size": 1}}]},
     b"\x00", None, "cannot be sent as binary"),
    # shapes numpy cannot make (they were a 500): a huge dimension with no values, 33+ dimensions
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2 ** 63, 0], "parameters": {"binary_data_size": 0}}]},
     b"", None, "out of range: at most 32 dimensions"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2 ** 62, 4, 0],
                  "parameters": {"binary_data_size": 0}}]}, b"", None, "out of range"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 65, "parameters": {"binary_data_size": 4}}]},
     b"\x00" * 4, None, "out of range|dimensions"),
    ({"inputs": []}, b"", "99999", "must be the byte length"),
    ({"inputs": []}, b"", "\u00b2", "must be the byte length"),
])
def test_malformed_binary_requests_are_400_naming_the_problem(header, binary, n, fragment):
    body, length = _body(header, binary)
    with pytest.raises(ProtocolError, match=fragment) as err:
        parse_infer_request(request_object(body, n or length, "inputs"), SIGNATURE)
    assert err.value.status == 400


def test_binary_outputs_when_asked_per_output_or_for_all():
    out = {"model_name": "m", "model_version": "1", "id": "r", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]},
        {"name": "tag", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]}
    assert wants_binary({"inputs": []}) == set()
    assert wants_binary({"parameters": {"binary_data_output": True}}) == {"*"}
    asked = wants_binary({"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                      {"name": "label"}]})
    assert asked == {"probabilities"}
    body, n = encode_response(json.loads(json.dumps(out)), asked)
    header = json.loads(body[:n])
    label, probs, _ = header["outputs"]
    assert label["data"] == [1, 0] and "data" not in probs and probs["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(body[n:], "<f4").tolist() == [0.25, 0.75, 0.5, 0.5]
    body, n = encode_response(json.loads(json.dumps(out)), {"*"})
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(body[:n])["outputs"]]
    assert sizes == [16, 16, 6] and body[-6:] == b"\x02\x00\x00\x00ok"
    assert encode_response(json.loads(json.dumps(out)), set()) == (json.dumps(out).encode(), None)


def test_tritonclient_request_builder_and_response_parser_round_trip():
    """What tritonclient.http sends by default (binary inputs, binary outputs) parses here, and what maas
    answers parses back in tritonclient to the same arrays."""
    httpclient = pytest.importorskip("tritonclient.http")
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True: the client's default
    outputs = [httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("probabilities")]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], outputs=outputs)
    got, _, wanted = parse_infer_request(request_object(body, str(json_size), "inputs"),
                                         SIGNATURE)
    assert np.array_equal(got, x) and wanted == ["label", "probabilities"]
    req = json.loads(body[:json_size])
    probs = np.array([[0.1, 0.9]] * 4, dtype=np.float32)
    out = {"model_name": "m", "model_version": "1", "id": "r", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [4], "data": [1, 1, 1, 1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [4, 2], "data": probs.ravel().tolist()}]}
    content, n = encode_response(out, wants_binary(req))
    result = httpclient.InferenceServerClient.parse_response_body(content, header_length=n)
    assert result.as_numpy("label").tolist() == [1, 1, 1, 1]
    assert np.array_equal(result.as_numpy("probabilities"), probs)
