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
}
OPEN = {"live", "ready", "server_metadata", "openapi"}  # no API key needed


def openapi_document(title: str = "maas") -> dict:
    """The document: one operation per route of ``ROUTES``."""
    paths: dict = {}
    for method, pattern, handler, protocol in ROUTES:
        error = {"$ref": f"#/components/schemas/{'OpenAIError' if protocol == 'openai' else 'OIPError'}"}
        op = {"operationId": f"{handler}_{method.lower()}_{len(pattern.split('/'))}",
              "summary": SUMMARIES.get(handler, handler), "tags": [protocol],
              "responses": {"200": {"description": "OK"},
                            **{code: {"description": why, "content": {"application/json": {"schema": error}}}
                               for code, why in (("400", "A client mistake, named"), ("401", "Missing or wrong "
                                                 "API key"), ("404", "Unknown model, version or route"),
                                                 ("413", "Body over deploy.max_request_bytes"),
                                                 ("429", "Too many pinned-version loads this minute"),
                                                 ("503", "Not ready yet (retry-after)"))}}}
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
            op["requestBody"] = {"required": handler != "cancel_batch", "content": content}
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
