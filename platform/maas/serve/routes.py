"""The HTTP routes of a maas application as one table: (method, path pattern, handler, protocol).

Pure: no Ray, no Starlette. ``Router.match`` answers the handler and the path's parameters, or, for a path
the table knows under other methods, the methods it takes (the 405 ``allow`` list), or nothing (404). The
protocol of a route picks the error shape its mistakes are answered in (OpenAI's for ``/v1``, the Open
Inference Protocol's ``{"error": ...}`` otherwise, maas's own ``/maas/v1`` routes included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

ROUTES = (
    ("POST", "/v1/completions", "completions", "openai"),
    ("POST", "/v1/chat/completions", "chat_completions", "openai"),
    ("POST", "/v1/embeddings", "embeddings", "openai"),
    ("GET", "/v1/models", "openai_models", "openai"),
    ("GET", "/v1/models/{name}", "openai_model", "openai"),
    ("POST", "/v1/files", "create_file", "openai"),
    ("GET", "/v1/files/{file_id}", "file", "openai"),
    ("GET", "/v1/files/{file_id}/content", "file_content", "openai"),
    ("POST", "/v1/batches", "create_batch", "openai"),
    ("GET", "/v1/batches", "batches", "openai"),
    ("GET", "/v1/batches/{batch_id}", "batch", "openai"),
    ("POST", "/v1/batches/{batch_id}/cancel", "cancel_batch", "openai"),
    ("POST", "/tokenize", "tokenize", "openai"),
    ("POST", "/detokenize", "detokenize", "openai"),
    ("GET", "/v2", "server_metadata", "oip"),
    ("GET", "/v2/health/live", "live", "oip"),
    ("GET", "/v2/health/ready", "ready", "oip"),
    ("GET", "/v2/models", "models", "oip"),
    ("GET", "/v2/models/{name}", "metadata", "oip"),
    ("GET", "/v2/models/{name}/ready", "model_ready", "oip"),
    ("GET", "/v2/models/{name}/versions/{version}", "metadata", "oip"),
    ("GET", "/v2/models/{name}/versions/{version}/ready", "model_ready", "oip"),
    ("POST", "/v2/models/{name}/infer", "infer", "oip"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "infer", "oip"),
    ("GET", "/openapi.json", "openapi", "oip"),
    ("GET", "/maas/v1/usage", "usage", "maas"),  # maas's own, for operators: maas.serve.protocols.admin
    ("GET", "/maas/v1/keys", "list_keys", "maas"),
    ("POST", "/maas/v1/keys", "create_key", "maas"),
    ("GET", "/maas/v1/keys/{key}", "get_key", "maas"),
    ("POST", "/maas/v1/keys/{key}/revoke", "revoke_key", "maas"),
    ("POST", "/maas/v1/keys/{key}/rotate", "rotate_key", "maas"),
    ("GET", "/maas/v1/models/{name}/aliases", "aliases", "maas"),
    ("PUT", "/maas/v1/models/{name}/aliases/{alias}", "set_alias", "maas"),
)

NOT_FOUND_HINT = ("see the Open Inference Protocol v2 paths: /v2, /v2/health/{live,ready}, "
                  "/v2/models/{name}[/versions/{v}][/ready|/infer]")


@dataclass(frozen=True)
class Match:
    handler: Optional[str]                        # None: no route for this method and path
    params: dict = field(default_factory=dict)    # {name, version} taken from the path
    allow: tuple = ()                             # the methods the path takes (405 when handler is None)
    protocol: str = "oip"                         # whose error shape answers this path's mistakes


class Router:
    """``match(method, path)`` over ``routes`` (segments in braces match any one non-empty segment)."""

    def __init__(self, routes=ROUTES):
        self._by_length: dict = {}
        for method, pattern, handler, protocol in routes:
            segments = tuple(s for s in pattern.split("/") if s)
            self._by_length.setdefault(len(segments), []).append((method, segments, handler, protocol))
        self._cached = lru_cache(maxsize=4096)(self._match)  # a served model's few paths: a hit is ~20x faster

    def match(self, method: str, path: str) -> Match:
        return self._cached(method, path) if len(path) <= 256 else self._match(method, path)  # bounded memory

    def _match(self, method: str, path: str) -> Match:
        parts = [p for p in path.split("/") if p]
        allow, protocol = [], "oip"
        for route_method, segments, handler, route_protocol in self._by_length.get(len(parts), ()):
            params = {}
            for segment, part in zip(segments, parts):
                if segment[0] == "{":
                    params[segment[1:-1]] = part
                elif segment != part:
                    break
            else:
                if route_method == method:
                    return Match(handler, params, (route_method,), route_protocol)
                if route_method not in allow:
                    allow.append(route_method)
                protocol = route_protocol
        return Match(None, {}, tuple(allow), protocol)
