"""Client mistakes and the two wire shapes they are answered in, for every protocol.

``ProtocolError`` is what parsing and routing raise for a client mistake (its HTTP status and message); the
Open Inference Protocol answers ``{"error": message}`` and OpenAI's routes ``{"error": {"message", "type",
"code"}}``, which OpenAI's client libraries read. The OpenAPI document takes both shapes' schemas from here, so
what a route is documented to answer and what it answers are written once.
"""

from __future__ import annotations

from typing import Callable, Optional

import orjson
from starlette.responses import Response


class ProtocolError(Exception):
    """A client mistake: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        # a 503 (nothing loaded yet) tells the client when to come back
        self.headers = headers if headers is not None or status != 503 else {"retry-after": "2"}

    def __reduce__(self):  # picklable with its headers (it can cross Ray actors)
        return ProtocolError, (self.status, self.message, self.headers)


OIP_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
OPENAI_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                     "code": {"type": ["string", "integer", "null"]}}}}}
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 413: "invalid_request_error", 503: "service_unavailable"}


def _json(body: dict, status: int, headers: Optional[dict]) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def oip_error(status: int, message: str, headers: Optional[dict] = None) -> Response:
    """The Open Inference Protocol's error shape: ``{"error": message}``."""
    return _json({"error": message}, status, headers)


def openai_error_body(status: int, message: str) -> dict:
    """OpenAI's error object (also the payload of an error event in a stream)."""
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def openai_error(status: int, message: str, headers: Optional[dict] = None) -> Response:
    """OpenAI's error shape, which its client libraries read, for the /v1 routes."""
    return _json(openai_error_body(status, message), status, headers)


def error_for(protocol: str) -> Callable[..., Response]:
    """The error answer of a route's protocol (``maas.serve.routes``: ``openai`` or ``oip``)."""
    return openai_error if protocol == "openai" else oip_error


def answer(err: ProtocolError, protocol: str) -> Response:
    """``err`` in ``protocol``'s shape, with its headers (``www-authenticate`` on a 401, ``retry-after`` on a 503)."""
    return error_for(protocol)(err.status, err.message, err.headers)
