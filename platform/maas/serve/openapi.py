"""The OpenAPI 3.1 document of a maas application (``GET /openapi.json``), built from the route table
(``maas.serve.routes.ROUTES``) so that a route cannot exist without being described: its path parameters,
request body schema with an example, answers and error shapes (the Open Inference Protocol's
``{"error": "..."}`` or OpenAI's ``{"error": {"message", "type", "code"}}``), and the bearer key.
"""

from __future__ import annotations

from maas.serve.errors import OIP_ERROR_SCHEMA, OPENAI_ERROR_SCHEMA
from maas.serve.routes import ROUTES
from maas.version import __version__

TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "datatype": {"enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                          "FP16", "FP32", "FP64", "BYTES"]},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
    "data": {"type": "array", "description": "Row-major values (nested lists accepted); absent when the "
                                             "tensor travels as binary data after the JSON header."}}}
BODIES = {
    "infer": ("InferenceRequest", {
        "type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": TENSOR},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": {"type": "object", "properties": {
                    "binary_data": {"type": "boolean"}}}}}},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}},
        "example": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}}),
    "embeddings": ("EmbeddingRequest", {
        "type": "object", "required": ["input"], "properties": {
            "model": {"type": "string"}, "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                "type": "string"}}]}, "encoding_format": {"enum": ["float", "base64"]}},
        "example": {"model": "minilm", "input": ["Ray Serve hosts models."]}}),
    "completions": ("CompletionRequest", {
        "type": "object", "required": ["prompt"], "properties": {
            "model": {"type": "string"}, "prompt": {"oneOf": [{"type": "string"}, {"type": "array"}]},
            "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number"},
            "stream": {"type": "boolean"}, "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                "type": "string"}, "maxItems": 16}]}, "n": {"type": "integer"}, "seed": {"type": "integer"}},
        "example": {"model": "lm", "prompt": "The function returns", "max_tokens": 16}}),
    "chat_completions": ("ChatCompletionRequest", {
        "type": "object", "required": ["messages"], "properties": {
            "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role"], "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
                    "content": {"type": ["string", "array", "null"]}}}},
            "max_tokens": {"type": "integer", "minimum": 1}, "stream": {"type": "boolean"}},
        "example": {"model": "lm", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}}),
    "tokenize": ("TokenizeRequest", {
        "type": "object", "properties": {
            "model": {"type": "string"}, "prompt": {"type": "string"}, "messages": {"type": "array"},
            "add_special_tokens": {"type": "boolean"}},
        "example": {"model": "lm", "prompt": "The function returns"}}),
    "create_batch": ("BatchRequest", {
        "type": "object", "required": ["input_file_id", "endpoint"], "properties": {
            "input_file_id": {"type": "string"}, "endpoint": {"enum": ["/v1/completions", "/v1/chat/completions"]},
            "completion_window": {"enum": ["24h"]}, "metadata": {"type": "object", "maxProperties": 16}},
        "example": {"input_file_id": "file-0123456789abcdef01234567", "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}}),
    "create_file": ("FileUpload", {
        "type": "object", "required": ["file", "purpose"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "JSON Lines: one request per line"},
            "purpose": {"enum": ["batch"]}},
        "example": {"purpose": "batch", "file": "batch.jsonl"}}),
    "cancel_batch": ("CancelRequest", {"type": "object", "description": "No fields: the body may be empty",
                                       "example": {}}),
    "create_key": ("KeyRequest", {
        "type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
            "models": {"type": "array", "items": {"type": "string"}}, "expires_in_s": {"type": "number"},
            **{k: {"type": "integer", "minimum": 1} for k in ("rpm", "requests_per_day", "tpm", "tokens_per_day")},
            "admin": {"type": "boolean"}},
        "example": {"name": "team-a", "models": ["digits*"], "expires_in_s": 2592000, "tpm": 100000}}),
    "set_alias": ("AliasMove", {
        "type": "object", "required": ["version"], "properties": {
            "version": {"type": "integer", "minimum": 1}, "expected": {"type": ["integer", "null"]},
            "force": {"type": "boolean"}, "reason": {"type": "string"}},
        "example": {"version": 2, "expected": 1}}),
    "revoke_key": ("Empty", {"type": "object", "description": "No fields: the body may be empty", "example": {}}),
    "rotate_key": ("Empty", {"type": "object", "description": "No fields: the body may be empty", "example": {}}),
    "detokenize": ("DetokenizeRequest", {
        "type": "object", "required": ["tokens"], "properties": {
            "model": {"type": "string"}, "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
        "example": {"model": "lm", "tokens": [17, 42]}}),
}
SUMMARIES = {
    "tokenize": "A prompt (or chat messages) as the served LLM's token ids (vLLM's /tokenize)",
    "detokenize": "Token ids back to text with the served LLM's tokenizer (vLLM's /detokenize)",
    "completions": "Text completion (OpenAI); streams server-sent events with stream=true",
    "chat_completions": "Chat completion (OpenAI); streams server-sent events with stream=true",
    "embeddings": "Sentence embeddings (OpenAI)", "openai_models": "The served models (OpenAI)",
    "openai_model": "One served model (OpenAI)", "server_metadata": "Server metadata (OIP)",
    "live": "Liveness (open, no key)", "ready": "Readiness: every served model loaded (open, no key)",
    "models": "The served models, their versions and canaries", "metadata": "Model metadata (OIP)",
    "model_ready": "Model readiness and, when not ready, why (OIP)",
    "infer": "Inference (OIP v2; JSON or the binary tensor extension)", "openapi": "This document",
    "create_file": "Upload a batch input file (OpenAI; multipart: file, purpose=batch)",
    "file": "One file's object (OpenAI)", "file_content": "One file's content (OpenAI)",
    "create_batch": "Start a batch over an uploaded file (OpenAI Batch API; runs as a maas batch)",
    "batches": "This key's batches, newest first (OpenAI)", "batch": "One batch: status, counts, files (OpenAI)",
    "cancel_batch": "Cancel a batch; what it answered so far is kept (OpenAI)",
    "usage": "Metered usage per key, model and version (an admin key: everyone's; a named key: its own)",
    "list_keys": "The store's API keys (admin)", "create_key": "Make an API key; its secret is answered once (admin)",
    "get_key": "One key and its history (admin)", "revoke_key": "Revoke a key on every replica (admin)",
    "rotate_key": "A new secret for a key, answered once (admin)",
    "aliases": "A model's aliases (admin)", "set_alias": "Move an alias, optionally compare-and-swap (admin)",
}
OPEN = {"live", "ready", "server_metadata", "openapi"}  # no API key needed
ERRORS = (("400", "A client mistake, named"), ("401", "Missing, unknown, expired or revoked API key"),
          ("403", "The key may not call this model, or the route needs an admin key"),
          ("404", "Unknown model, version or route"), ("413", "Body over deploy.max_request_bytes"),
          ("429", "Over a key's request or token limit, or too many pinned-version loads (retry-after)"),
          ("503", "Not ready yet (retry-after)"))


def openapi_document(title: str = "maas") -> dict:
    """The document: one operation per route of ``ROUTES``."""
    paths: dict = {}
    for method, pattern, handler, protocol in ROUTES:
        error = {"$ref": f"#/components/schemas/{'OpenAIError' if protocol == 'openai' else 'OIPError'}"}
        op = {"operationId": f"{handler}_{method.lower()}_{len(pattern.split('/'))}",
              "summary": SUMMARIES.get(handler, handler), "tags": [protocol],
              "responses": {"200": {"description": "OK"},
                            **{code: {"description": why, "content": {"application/json": {"schema": error}}}
                               for code, why in ERRORS}}}
        params = [p[1:-1] for p in pattern.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {
                "type": "string", **({"pattern": "^[0-9]{1,9}$"} if p == "version" else {})}} for p in params]
        if handler in BODIES:
            name, schema = BODIES[handler]
            media = "multipart/form-data" if handler == "create_file" else "application/json"
            content = {media: {"schema": {"$ref": f"#/components/schemas/{name}"}, "example": schema["example"]}}
            if handler == "infer":
                content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"},
                                                       "description": "JSON header (Inference-Header-Content-"
                                                                      "Length bytes), then the tensors' raw data"}
            op["requestBody"] = {"required": name != "Empty" and handler != "cancel_batch", "content": content}
        if handler in OPEN:
            op["security"] = []
        paths.setdefault(pattern, {})[method.lower()] = op
    schemas = {name: {k: v for k, v in schema.items() if k != "example"} for name, schema in BODIES.values()}
    return {"openapi": "3.1.0",
            "info": {"title": title, "version": __version__,
                     "description": "Models served by maas: Open Inference Protocol v2 and OpenAI-style routes."},
            "paths": paths, "security": [{"bearer": []}],
            "components": {"schemas": {**schemas, "OIPError": OIP_ERROR_SCHEMA, "OpenAIError": OPENAI_ERROR_SCHEMA},
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                          "description": "MAAS_API_KEYS, when set"}}}}
