"""The OIP gRPC service: the committed descriptor set is what the .proto compiles to, its messages are the
protocol's on the wire (tritonclient's own messages parse as ours and back), and requests and answers
convert to and from the REST request objects with every mistake a ProtocolError."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip import proto
from maas.serve.protocols.oip.grpc_service import CODES, infer_response, request_object
from maas.serve.protocols.oip.handlers import parse_object

SIGNATURE = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                         {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
             "classes": [0, 1, 2]}


def test_the_committed_descriptor_set_is_what_the_proto_compiles_to(tmp_path):
    pytest.importorskip("grpc_tools")
    out = tmp_path / "fresh.binpb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.DESCRIPTOR_SET.parent}",
                    f"--descriptor_set_out={out}", str(proto.DESCRIPTOR_SET.with_suffix(".proto"))], check=True)
    assert out.read_bytes() == proto.DESCRIPTOR_SET.read_bytes(), "run `make proto` after editing the .proto"


def test_messages_are_the_protocols_on_the_wire_and_coexist_with_tritonclient():
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")  # same 'inference' package, other pool
    for name in ("ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "InferParameter",
                 "InferTensorContents", "ServerMetadataResponse", "ModelReadyRequest"):
        ours, theirs = proto.message(name).DESCRIPTOR, getattr(service_pb2, name).DESCRIPTOR
        for field in ours.fields:
            other = theirs.fields_by_number[field.number]
            assert (other.name, other.type) == (field.name, field.type), f"{name}.{field.name}"
    request = service_pb2.ModelInferRequest(model_name="digits", model_version="2", id="r1")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    request.parameters["priority"].int64_param = 3
    ours = proto.ModelInferRequest.FromString(request.SerializeToString())
    assert ours.model_name == "digits" and ours.parameters["priority"].int64_param == 3
    assert service_pb2.ModelInferRequest.FromString(ours.SerializeToString()) == request
    assert pickle.loads(pickle.dumps(ours)) == ours  # Serve pickles a request from its proxy to a replica
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert set(proto.METHODS) <= {m.name for m in theirs.methods} and theirs.full_name == proto.SERVICE


def _request(**inputs):
    req = proto.ModelInferRequest(model_name="m")
    for name, (datatype, shape) in inputs.items():
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    return req


def test_raw_and_typed_contents_become_the_same_request_object():
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    raw = _request(input=("FP32", [2, 4]))
    raw.raw_input_contents.append(rows.astype("<f4").tobytes())
    raw.outputs.add(name="label")
    typed = _request(input=("FP32", [2, 4]))
    typed.inputs[0].contents.fp32_contents.extend(rows.ravel().tolist())
    typed.id = "abc"
    x1, rid1, wanted1 = parse_object(request_object(raw), SIGNATURE, "classify")
    x2, rid2, wanted2 = parse_object(request_object(typed), SIGNATURE, "classify")
    assert np.array_equal(x1, rows) and np.array_equal(x2, rows)
    assert (rid1, wanted1, rid2, wanted2) == (None, ["label"], "abc", None)
    text = _request(text=("BYTES", [2]))
    text.inputs[0].contents.bytes_contents.extend(["héllo".encode(), b"world"])
    assert parse_object(request_object(text), {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]},
                        "embed")[0] == ["héllo", "world"]
    raw_text = _request(text=("BYTES", [1]))
    raw_text.raw_input_contents.append(struct.pack("<I", 2) + b"hi")
    assert request_object(raw_text)["inputs"][0]["data"] == ["hi"]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.raw_input_contents.extend([b"", b""]), "raw_input_contents holds 2 entries"),
    (lambda r: r.raw_input_contents.append(b"\x00" * 7), "not a whole number of FP32"),
    (lambda r: r.raw_input_contents.append(b"\x00" * 12), "needs 8 values"),
    (lambda r: r.inputs[0].contents.int_contents.extend([1] * 8),
     "takes its values in contents.fp32_contents, not int_contents"),
    (lambda r: None, "'data' is missing"),
    (lambda r: (setattr(r.inputs[0], "datatype", "FP16"), r.inputs[0].contents.int_contents.append(1)),
     "has no 'contents' field"),
    (lambda r: r.inputs[0].contents.fp32_contents.extend([float("nan")] * 8), "finite"),
])
def test_malformed_requests_are_protocol_errors(mutate, fragment):
    req = _request(input=("FP32", [2, 4]))
    mutate(req)
    with pytest.raises(ProtocolError, match=fragment) as err:
        parse_object(request_object(req), SIGNATURE, "classify")
    assert CODES[err.value.status].name == "INVALID_ARGUMENT"


def test_answers_come_back_raw_in_their_datatypes():
    out = {"model_name": "m", "model_version": "3", "id": "x",
           "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [2, 0]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": [0.1] * 6},
                       {"name": "label_text", "datatype": "BYTES", "shape": [1], "data": ["cat"]}]}
    response = proto.ModelInferResponse.FromString(infer_response(out).SerializeToString())
    assert [o.name for o in response.outputs] == ["label", "probabilities", "label_text"]
    assert np.frombuffer(response.raw_output_contents[0], "<i8").tolist() == [2, 0]
    assert np.allclose(np.frombuffer(response.raw_output_contents[1], "<f4"), 0.1)
    assert response.raw_output_contents[2] == struct.pack("<I", 3) + b"cat"
    assert (response.model_version, list(response.outputs[1].shape)) == ("3", [2, 3])


def test_a_taken_grpc_port_turns_grpc_off_with_a_warning_instead_of_failing_serve(caplog):
    import socket

    from maas.runtime import free_port
    from maas.serve.deploy import grpc_options

    port = free_port()
    assert grpc_options(port)["grpc_servicer_functions"] == [proto.SERVICER_FUNCTION]
    assert grpc_options(0) is None
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", port))
        holder.listen()
        assert grpc_options(port) is None
    assert f"port {port} is taken" in caplog.text and "deploy.grpc_port" in caplog.text
