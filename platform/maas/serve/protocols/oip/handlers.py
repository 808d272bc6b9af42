"""Open Inference Protocol v2 routes: health, server and model metadata, readiness, ``infer`` (classifiers,
text classifiers, encoders). Language models answer on the OpenAI routes (``maas.serve.protocols.openai.generation``).

Request parsing and response shapes are pure functions in ``maas.serve.protocols.oip.codec`` (JSON) and
``maas.serve.protocols.oip.binary`` (the binary tensor extension, both ways); this module binds them to the
served models (``ModelHost``) and to the replica (``server``: body limit, API keys, batched model calls).
Every client mistake is a 4xx ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Optional

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from maas.serve.errors import ProtocolError, oip_error
from maas.serve.http import JSONResponse, parse_off_loop, read_body, request_id
from maas.serve.protocols.oip.binary import HEADER, encode_response, request_object, wants_binary
from maas.serve.protocols.oip.codec import (
    SERVER_METADATA,
    check_rows,
    classifier_outputs,
    embedding_outputs,
    model_metadata,
    parse_infer_request,
    parse_text_infer_request,
)


class OIPHandlers:
    def __init__(self, host, server):
        self.host = host
        self.server = server  # .keys, .max_request_bytes, async .run(loaded, x)

    def guard(self, request: Request, name: Optional[str]):
        """(served model or None, error response or None): 401 without a valid key (when keys are set), 403
        for a model the key may not call, 404 for a model not served here."""
        try:
            caller = self.server.keys.check_request(request)
            if name is not None:
                caller.check_model(name)
            return (None if name is None else self.served(name)), None
        except ProtocolError as err:
            return None, oip_error(err.status, err.message, err.headers)

    def served(self, name: str):
        """The served model ``name``; 404 when it is not served here."""
        served = self.host.models.get(name)
        if served is None:
            raise ProtocolError(404, f"model '{name}' is not served here; served: {', '.join(self.host.models)}")
        return served

    # ------------------------------------------------------------------------------- health & metadata
    def live(self, request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    def ready(self, request: Request) -> JSONResponse:
        waiting = self.host.not_ready()
        if waiting:  # names only: why (paths, store URIs) is for callers with a key, at the model's own route
            return JSONResponse({"ready": False, "error": f"not ready: {', '.join(sorted(waiting))} (GET "
                                                          "/v2/models/<name>/ready says why)"},
                                status_code=503, headers={"retry-after": "2"})
        return JSONResponse({"ready": True})

    def server_metadata(self, request: Request) -> JSONResponse:
        return JSONResponse(SERVER_METADATA)

    def models(self, request: Request) -> JSONResponse:
        """The served models the key may call."""
        try:
            caller = self.server.keys.check(request.headers.get("authorization"))
        except ProtocolError as err:
            return oip_error(err.status, err.message, err.headers)
        return JSONResponse({"models": [
            {"name": m.name, "versions": m.loaded_versions(), "ready": m.primary is not None,
             "platform": m.primary.mv.runtime if m.primary else None, "target": m.target,
             **({"canary": {"alias": m.canary_alias, "percent": m.canary_percent,
                            "version": str(m.canary.mv.version) if m.canary else None}} if m.canary_alias else {})}
            for m in self.host.models.values() if caller.allows(m.name)]})

    async def metadata(self, request: Request, name: str, version: Optional[str] = None) -> JSONResponse:
        served, bad = self.guard(request, name)
        if bad is not None:
            return bad
        try:
            meta, loaded = await self.metadata_of(served, version)
        except ProtocolError as err:
            return oip_error(err.status, err.message, err.headers)
        return JSONResponse(meta, headers=loaded.headers)

    async def metadata_of(self, served, version: Optional[str]):
        """(metadata object, loaded version) of a served model, or of one version of it."""
        loaded = served.primary if version is None and served.primary else await self.host.resolve(served, version)
        meta = model_metadata(served.name, loaded.mv.version, loaded.mv.runtime, loaded.signature)
        if version is None:
            meta["versions"] = served.loaded_versions()
        return meta, loaded

    async def model_ready(self, request: Request, name: str, version: Optional[str] = None) -> JSONResponse:
        served, bad = self.guard(request, name)
        if bad is not None:
            return bad
        if version is not None:
            try:
                await self.host.resolve(served, version)
            except ProtocolError as err:
                return oip_error(err.status, err.message, err.headers)
        elif served.primary is None:
            return JSONResponse({"name": name, "ready": False, "error": served.problem}, status_code=503)
        return JSONResponse({"name": name, "ready": True})

    # ------------------------------------------------------------------------------------ inference
    async def infer(self, request: Request, name: str, version: Optional[str] = None):
        """-> (response, rows, loaded version or None)."""
        served, bad = self.guard(request, name)
        if bad is not None:
            return bad, 0, None
        try:
            body = await read_body(request, self.server.max_request_bytes)
            loaded = await self.host.resolve(served, version)
        except ProtocolError as err:
            return oip_error(err.status, err.message, err.headers), 0, None
        try:
            check_task(loaded)
            x, req_id, wanted, req = await parse_off_loop(_parse_infer, body, request.headers.get(HEADER),
                                                          loaded.signature, loaded.task)
            check_rows(len(x), self.server.max_rows)
        except ProtocolError as err:
            return oip_error(err.status, err.message, loaded.headers), 0, loaded
        out = await self.answer(loaded, x, req_id or request_id(request), wanted)  # else the x-request-id
        if len(x) > OFF_LOOP_ROWS:  # a large answer is rendered in a worker thread: the loop keeps serving
            return await asyncio.to_thread(_render, out, req, loaded.headers), len(x), loaded
        return _render(out, req, loaded.headers), len(x), loaded

    async def answer(self, loaded, x, req_id: Optional[str], wanted: Optional[list]) -> dict:
        """Run a parsed request (``parse_object``) through the model -> the OIP response object."""
        task = loaded.task
        if task == "embed":
            outputs = embedding_outputs(await self.server.run(loaded, x))
        elif task == "classify_text":
            outputs = classifier_outputs(await self.server.run(loaded, x), loaded.signature, None)
        else:
            logits = np.zeros((0, len(loaded.signature["classes"])), dtype=np.float32) if len(x) == 0 \
                else await self.server.run(loaded, x)
            outputs = classifier_outputs(logits, loaded.signature, wanted)
        return {"model_name": loaded.mv.name, "model_version": str(loaded.mv.version),
                "id": req_id or uuid.uuid4().hex, "outputs": outputs}


OFF_LOOP_ROWS = 2048


def _render(out: dict, req: dict, headers: dict) -> Response:
    """The answer as JSON, or in the binary tensor extension when the request asked for it."""
    binary = wants_binary(req)
    if not binary:
        return JSONResponse(out, headers=headers)
    content, header_length = encode_response(out, binary)
    return Response(content, media_type="application/octet-stream", headers={**headers, HEADER: str(header_length)})


def check_task(loaded) -> None:
    """400 for a generative model: it answers on the OpenAI routes, not OIP infer."""
    if loaded.task == "generate":
        raise ProtocolError(400, f"model '{loaded.mv.name}' generates text: POST /v1/completions or "
                                 "/v1/chat/completions")


def parse_object(req: dict, signature: dict, task: str):
    """A request object (JSON, binary-decoded or from gRPC) -> (model input, request id, wanted outputs)."""
    if task in ("embed", "classify_text"):
        texts, req_id = parse_text_infer_request(req, signature)
        return texts, req_id, None
    return parse_infer_request(req, signature)


def _parse_infer(body: bytes, header_length: Optional[str], signature: dict, task: str):
    """-> (model input, request id, wanted output names, the request object): JSON or binary extension."""
    req = request_object(body, header_length, "an 'inputs' list")
    return (*parse_object(req, signature, task), req)
