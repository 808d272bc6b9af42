"""The Open Inference Protocol's gRPC service (``grpc_predict_v2.proto`` beside this file), for Serve's gRPC
proxy and for Python callers.

The proto is compiled with grpcio-tools into a descriptor set (``grpc_predict_v2.binpb``, ``make proto``;
a unit test checks it is what the .proto compiles to) and loaded here into a descriptor pool of its own,
not protobuf's default one: the protocol's package is ``inference``, which ``tritonclient.grpc`` registers
in the default pool too, so generated ``_pb2`` modules would make ``import tritonclient.grpc`` and maas in
one process (a notebook, a test) fail with "duplicate symbol". The message classes are module attributes
(``ModelInferRequest``...), so Serve can pickle a request from its proxy to a replica.

``add_GRPCInferenceServiceServicer_to_server`` is what ``gRPCOptions.grpc_servicer_functions`` names
(``SERVICER_FUNCTION``); ``GRPCInferenceServiceStub`` is a plain client.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
SERVICER_FUNCTION = f"{__name__}.add_GRPCInferenceServiceServicer_to_server"
DESCRIPTOR_SET = Path(__file__).with_name("grpc_predict_v2.binpb")
# RPC name -> (request message, response message); all unary
METHODS = {"ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
           "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
           "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
           "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
           "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
           "ModelInfer": ("ModelInferRequest", "ModelInferResponse")}


def _load() -> dict:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    classes = message_factory.GetMessageClassesForFiles([f.name for f in files], pool)
    out = {}
    for full_name, cls in classes.items():
        short = full_name.removeprefix("inference.")
        if "." not in short:  # top-level messages: importable by name, so pickle finds them
            cls.__module__, cls.__qualname__ = __name__, short
            out[short] = cls
    return out


_MESSAGES = _load()
globals().update(_MESSAGES)
ServerLiveRequest = _MESSAGES["ServerLiveRequest"]
ModelInferRequest = _MESSAGES["ModelInferRequest"]
ModelInferResponse = _MESSAGES["ModelInferResponse"]
InferTensorContents = _MESSAGES["InferTensorContents"]


def message(name: str):
    """The message class ``inference.<name>``."""
    return _MESSAGES[name]


class Malformed:
    """A request whose bytes do not parse as its message: handed to the RPC as it is, so the answer is
    INVALID_ARGUMENT naming the problem (gRPC answers a deserializer's exception with INTERNAL, a server
    fault, for what is the client's mistake). Picklable: Serve's proxy sends it on to a replica."""

    def __init__(self, rpc: str, error: str):
        self.rpc, self.error = rpc, error


def _parser(rpc: str, cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, RecursionError on hostile nesting...
            return Malformed(rpc, f"{type(exc).__name__}: {str(exc)[:200]}")

    return parse


def add_GRPCInferenceServiceServicer_to_server(servicer, server) -> None:  # noqa: N802 (gRPC's naming)
    """Register ``servicer`` (an object with one method per RPC taking (request, context)) on ``server``; a
    request that does not parse reaches it as a ``Malformed``."""
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(getattr(servicer, rpc),
                                                 request_deserializer=_parser(rpc, _MESSAGES[req]),
                                                 response_serializer=_MESSAGES[resp].SerializeToString)
        for rpc, (req, resp) in METHODS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    add_registered = getattr(server, "add_registered_method_handlers", None)
    if add_registered is not None:
        add_registered(SERVICE, handlers)


class GRPCInferenceServiceStub:
    """A client: ``GRPCInferenceServiceStub(grpc.insecure_channel("127.0.0.1:9000")).ModelInfer(request)``."""

    def __init__(self, channel: grpc.Channel):
        for rpc, (req, resp) in METHODS.items():
            setattr(self, rpc, channel.unary_unary(f"/{SERVICE}/{rpc}",
                                                   request_serializer=_MESSAGES[req].SerializeToString,
                                                   response_deserializer=_MESSAGES[resp].FromString))
