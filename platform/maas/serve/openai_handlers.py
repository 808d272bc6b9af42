"""OpenAI-compatible routes: ``GET /v1/models[/{name}]``, ``POST /v1/completions`` and ``/v1/chat/completions``
(models served by a vLLM engine: ``maas.serve.llm_handlers``; byte-level generators answer completions, with
``stream: true`` as server-sent events, one per decoded piece, then ``data: [DONE]``) and ``POST /v1/embeddings``
(sentence encoders). ``model`` names a served model (``name`` or ``name/version``; optional when exactly one model of
that task is served). Mistakes are answered in OpenAI's error shape, which its client libraries read."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Optional

from starlette.requests import Request
from starlette.responses import JSONResponse

from maas.serve.http import BAD_KEY, key_ok, openai_error, read_body, retry_headers, sse
from maas.serve.oip import (ProtocolError, embeddings_response, json_object, openai_model, parse_completion_request,
                            parse_embeddings_request)


class OpenAIHandlers:
    def __init__(self, host, server):
        self.host = host
        self.server = server  # .key_hashes, .max_request_bytes, async .run(loaded, x)
        self._llm = None

    @property
    def llm(self):
        if self._llm is None:  # its metrics exist only where an engine-served model is
            from maas.serve.llm_handlers import LLMHandlers

            self._llm = LLMHandlers()
        return self._llm

    async def chat(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        bad = self._key(request)
        if bad is not None:
            return bad, 0, None
        loaded = None
        try:
            req = json_object(await read_body(request, self.server.max_request_bytes), "'messages'")
            loaded = await self.host.for_task(openai_model(req), "generate")
            if loaded.mv.runtime != "vllm":
                raise ProtocolError(400, f"model '{loaded.mv.name}' is a byte-level generator without a chat "
                                         "template; use /v1/completions")
            return await self.llm.run("chat", req, loaded)
        except ProtocolError as err:
            return openai_error(err.status, err.message, retry_headers(err)), 0, loaded

    def _key(self, request: Request) -> Optional[JSONResponse]:
        if not key_ok(request, self.server.key_hashes):
            return openai_error(401, BAD_KEY, {"www-authenticate": "Bearer"})
        return None

    async def completions(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        bad = self._key(request)
        if bad is not None:
            return bad, 0, None
        try:
            req = json_object(await read_body(request, self.server.max_request_bytes), "'prompt'")
            loaded = await self.host.for_task(openai_model(req), "generate")
            if loaded.mv.runtime == "vllm":
                return await self.llm.run("completions", req, loaded)
            prompt, options, stream = parse_completion_request(req, loaded.signature)
        except ProtocolError as err:
            return openai_error(err.status, err.message, retry_headers(err)), 0, None
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": loaded.mv.ref}
        if not stream:
            text, finish, count = await asyncio.to_thread(loaded.predictor.complete, prompt, **options)
            return JSONResponse({**head, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                      "finish_reason": finish}],
                                 "usage": {"prompt_tokens": len(prompt), "completion_tokens": count,
                                           "total_tokens": len(prompt) + count}}, headers=loaded.headers), 1, loaded

        def event(text: str, finish: Optional[str]) -> str:
            return "data: " + json.dumps({**head, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                               "finish_reason": finish}]}) + "\n\n"

        return sse(loaded, prompt, options, event, done="data: [DONE]\n\n"), 1, loaded

    async def embeddings(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        bad = self._key(request)
        if bad is not None:
            return bad, 0, None
        try:
            body = await read_body(request, self.server.max_request_bytes)
            texts, model, fmt = parse_embeddings_request(body)
            loaded = await self.host.for_task(model, "embed")
        except ProtocolError as err:
            return openai_error(err.status, err.message, retry_headers(err)), 0, None
        emb = await self.server.run(loaded, texts)
        tokens = loaded.predictor.tokenizer.count_tokens(texts)
        return JSONResponse(embeddings_response(emb, loaded.mv.ref, fmt, tokens), headers=loaded.headers), \
            len(texts), loaded

    def _model_card(self, served) -> dict:
        mv = served.primary.mv
        return {"id": served.name, "object": "model", "created": int(mv.created_at), "owned_by": "maas",
                "version": mv.ref, "task": mv.task}

    def models(self, request: Request) -> JSONResponse:
        """``GET /v1/models``: the served models that have a version loaded (what ``model`` may name)."""
        bad = self._key(request)
        if bad is not None:
            return bad
        data = [self._model_card(m) for m in self.host.models.values() if m.primary is not None]
        return JSONResponse({"object": "list", "data": data})

    def model(self, request: Request, name: str) -> JSONResponse:
        """``GET /v1/models/{name}``: one served model, or a 404 in OpenAI's shape."""
        bad = self._key(request)
        if bad is not None:
            return bad
        served = self.host.models.get(name)
        if served is None or served.primary is None:
            why = "is not served here" if served is None else f"is not ready: {served.problem}"
            return openai_error(404, f"model '{name}' {why}; served: {', '.join(self.host.models) or 'none'}")
        return JSONResponse(self._model_card(served), headers=served.primary.headers)

