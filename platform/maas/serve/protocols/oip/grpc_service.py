"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), through Ray Serve's gRPC proxy.

Serve's proxy (``deploy.grpc_port``, 9000 by default) deserializes each call with ``maas.serve.protocols.oip.proto`` and
hands it to the ingress replica's method of the RPC's name (``ModelServer.ModelInfer``...), which calls
``OIPGrpc``. A request becomes the same request object the REST routes parse (``raw_input_contents`` through
the binary extension's decoder, typed ``contents`` as lists), so both protocols share every check and every
answer: the outputs come back as ``raw_output_contents``, as Triton sends them.

Messages are bounded at the transport: Serve's gRPC servers (its proxy, and the replicas themselves in the
high-throughput mode) take ``DeploySpec.grpc_message_limit()`` as their limit (``RAY_SERVE_GRPC_MAX_MESSAGE_SIZE``;
gRPC applies it to a compressed message's inflated size), so an oversized or inflating message is refused
before it is in memory, whether or not it carries a key; maas refuses one over ``deploy.max_request_bytes``.

Client mistakes are gRPC status codes with the REST message as details: 400 -> INVALID_ARGUMENT, 401 ->
UNAUTHENTICATED (API keys travel as ``authorization: Bearer <key>`` metadata), 403 (a model the key may not
call) -> PERMISSION_DENIED, 404 -> NOT_FOUND, 413 / 429 ->
RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE; a server fault is INTERNAL and the replica keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import grpc
import numpy as np

from maas.serve.errors import ProtocolError
from maas.serve.http import OFF_LOOP_BYTES
from maas.serve.protocols.oip import proto
from maas.serve.protocols.oip.binary import decode_raw, encode_raw
from maas.serve.protocols.oip.codec import NUMERIC, SERVER_METADATA, check_rows
from maas.serve.protocols.oip.handlers import check_task, parse_object

logger = logging.getLogger("ray.serve")
PATH = f"/{proto.SERVICE}/"
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED,
         404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
         503: grpc.StatusCode.UNAVAILABLE}
# InferTensorContents field holding each datatype (FP16 has none: send it raw)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
OPEN = {"ServerLive", "ServerReady", "ServerMetadata"}  # like the REST health routes: no key needed


def _parameters(params) -> dict:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()
            if v.WhichOneof("parameter_choice")}


def _contents(tensor) -> object:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise ProtocolError(400, f"input '{tensor.name}': datatype {tensor.datatype!r} has no 'contents' field; "
                                 "send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    if not values and any(tensor.contents.ListFields()):
        raise ProtocolError(400, f"input '{tensor.name}': datatype {tensor.datatype} takes its values in "
                                 f"contents.{field}, not {tensor.contents.ListFields()[0][0].name}")
    if tensor.datatype == "BYTES":
        try:
            return [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise ProtocolError(400, f"input '{tensor.name}': BYTES contents must be UTF-8 text") from None
    try:
        return np.asarray(values, dtype=NUMERIC[tensor.datatype])
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(400, f"input '{tensor.name}': contents do not fit {tensor.datatype}: {exc}") from None


def request_object(request) -> dict:
    """A ``ModelInferRequest`` -> the request object the REST routes parse (tensor data decoded)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(400, f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs; "
                                 "send one per input, in order (or none, and 'contents' in each input)")
    inputs = []
    for i, t in enumerate(request.inputs):
        tensor = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                  "parameters": _parameters(t.parameters)}
        if raw:
            tensor["data"] = decode_raw(t.name, t.datatype, list(t.shape), memoryview(raw[i]))
        elif t.HasField("contents"):
            tensor["data"] = _contents(t)
        inputs.append(tensor)
    req = {"inputs": inputs, "parameters": _parameters(request.parameters)}
    if request.id:
        req["id"] = request.id
    if request.outputs:
        req["outputs"] = [{"name": o.name} for o in request.outputs]
    return req


def infer_response(out: dict):
    """The REST response object -> a ``ModelInferResponse`` with the data in ``raw_output_contents``."""
    response = proto.ModelInferResponse(model_name=out["model_name"], model_version=out["model_version"],
                                        id=out["id"])
    for tensor in out["outputs"]:
        response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        response.raw_output_contents.append(encode_raw(tensor["datatype"], tensor["data"]))
    return response


class OIPGrpc:
    """The RPCs, bound to the replica's models (``host``), its REST OIP handlers (``oip``: shared parsing and
    answers) and the replica itself (``server``: API keys, body limit, access log and metrics)."""

    def __init__(self, host, oip, server):
        self.host, self.oip, self.server = host, oip, server

    async def call(self, rpc: str, request, context):
        """Answer one RPC; a client mistake or a fault sets the status code on ``context`` (Serve's
        RayServegRPCContext) and returns an empty response."""
        response_type = proto.message(proto.METHODS[rpc][1])
        started, rows, loaded, status, key = time.perf_counter(), 0, None, 200, None
        try:
            if rpc not in OPEN:
                caller = self.server.keys.check(_metadata(context, "authorization"), " as gRPC metadata")
                model = getattr(request, "model_name", None) or getattr(request, "name", None)
                key = caller.name
                if isinstance(model, str) and model:
                    caller.check_model(model)
                if rpc == "ModelInfer":
                    await self.server.limits.admit(caller)
            if isinstance(request, proto.Malformed):
                raise ProtocolError(400, f"the {rpc} request does not parse as inference.{proto.METHODS[rpc][0]} "
                                         f"({request.error})")
            if rpc == "ModelInfer":
                response, rows, loaded = await self.infer(request)
            else:
                response = await getattr(self, rpc)(request)
        except ProtocolError as err:
            status, response = err.status, response_type()
            _fail(context, CODES.get(err.status, grpc.StatusCode.INVALID_ARGUMENT), err.message)
        except Exception:  # a server fault, not a client mistake: keep serving, log it
            logger.exception("maas gRPC %s failed", rpc)
            status, response = 500, response_type()
            _fail(context, grpc.StatusCode.INTERNAL, f"internal error in {rpc}")
        if rpc == "ModelInfer":
            self.server.record(getattr(request, "model_name", None), loaded, status, _request_id(context),
                               PATH + rpc, rows, (time.perf_counter() - started) * 1e3, {"key": key} if key else None)
        return response

    # ------------------------------------------------------------------------------------------ RPCs
    async def ServerLive(self, request):  # noqa: N802 (RPC names)
        return proto.message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request):  # noqa: N802
        return proto.message("ServerReadyResponse")(ready=not self.host.not_ready())

    async def ServerMetadata(self, request):  # noqa: N802
        return proto.message("ServerMetadataResponse")(**SERVER_METADATA)

    async def ModelReady(self, request):  # noqa: N802
        served = self.oip.served(request.name)
        if request.version:
            await self.host.resolve(served, request.version)
            return proto.message("ModelReadyResponse")(ready=True)
        return proto.message("ModelReadyResponse")(ready=served.primary is not None)

    async def ModelMetadata(self, request):  # noqa: N802
        meta, _ = await self.oip.metadata_of(self.oip.served(request.name), request.version or None)
        response = proto.message("ModelMetadataResponse")(name=meta["name"], versions=meta["versions"],
                                                          platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def infer(self, request):
        """-> (ModelInferResponse, rows, loaded version)."""
        if request.ByteSize() > self.server.max_request_bytes:
            raise ProtocolError(413, f"request of {request.ByteSize()} bytes is over the limit of "
                                     f"{self.server.max_request_bytes}")
        loaded = await self.host.resolve(self.oip.served(request.model_name), request.model_version or None)
        check_task(loaded)
        if request.ByteSize() > OFF_LOOP_BYTES:  # decoding a large request must not stall the replica's loop
            x, req_id, wanted = await asyncio.to_thread(_parse, request, loaded)
        else:
            x, req_id, wanted = _parse(request, loaded)
        check_rows(len(x), self.server.max_rows)
        out = await self.oip.answer(loaded, x, req_id, wanted)
        return infer_response(out), len(x), loaded


def _parse(request, loaded):
    return parse_object(request_object(request), loaded.signature, loaded.task)


def _fail(context, code: grpc.StatusCode, details: str) -> None:
    if context is not None:
        context.set_code(code)
        context.set_details(details)


def _request_id(context) -> Optional[str]:
    try:
        return context.request_id()
    except Exception:  # not Serve's context
        return None


def _metadata(context, key: str) -> Optional[str]:
    """One of the call's metadata values (``authorization``: the REST routes' bearer header), or None."""
    return dict(context.invocation_metadata()).get(key) if context is not None else None
