"""OpenAI-compatible routes: ``GET /v1/models[/{name}]``, ``POST /v1/completions`` and ``/v1/chat/completions``
(language models, served by the vLLM engines of the replica: ``maas.serve.protocols.openai.generation``) and
``POST /v1/embeddings`` (sentence encoders). ``model`` names a served model (``name`` or ``name/version``; optional
when exactly one model of that task is served). Mistakes are answered in OpenAI's error shape, which its client
libraries read."""

from __future__ import annotations

from starlette.requests import Request

from maas.serve.errors import ProtocolError, openai_error
from maas.serve.http import JSONResponse, parse_off_loop, read_body
from maas.serve.protocols.oip.codec import (
    check_rows,
    embeddings_response,
    json_object,
    openai_model,
    parse_embeddings_request,
)


class OpenAIHandlers:
    def __init__(self, host, server):
        self.host = host
        self.server = server  # .keys, .max_request_bytes, async .run(loaded, x)
        self._llm = None

    @property
    def llm(self):
        if self._llm is None:  # its metrics exist only where an engine-served model is
            from maas.serve.protocols.openai.generation import LLMHandlers

            self._llm = LLMHandlers(self.server.record, self.server.charge)
        return self._llm

    async def chat(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        return await self._engine_call(request, "'messages'", lambda req, loaded: self.llm.run(
            "chat", req, loaded, request.scope["maas"]))

    async def completions(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        return await self._engine_call(request, "'prompt'", lambda req, loaded: self.llm.run(
            "completions", req, loaded, request.scope["maas"]))

    async def tokenize(self, request: Request):
        """``POST /tokenize``: a prompt or chat messages as the served LLM's token ids (what evaluation
        harnesses ask before scoring) -> (response, rows, loaded version or None)."""
        return await self._engine_call(request, "'prompt' or 'messages'",
                                       lambda req, loaded: self.llm.tokens("tokenize", req, loaded))

    async def detokenize(self, request: Request):
        """``POST /detokenize``: token ids back to text -> (response, rows, loaded version or None)."""
        return await self._engine_call(request, "'tokens'",
                                       lambda req, loaded: self.llm.tokens("detokenize", req, loaded))

    async def _for_task(self, caller, model, task: str):
        """The version that answers ``model`` (None: the one model of ``task``), if the caller's key may call
        it: a 403 before anything about a model it may not call is said."""
        if model:
            caller.check_model(model.split("/")[0])
        loaded = await self.host.for_task(model, task)
        caller.check_model(loaded.mv.name)
        return loaded

    def _key(self, request: Request):
        """(the caller, None), or (None, the 401 in OpenAI's shape) (``maas.serve.tenancy.KeyRing.check``)."""
        try:
            return self.server.keys.check_request(request), None
        except ProtocolError as err:
            return None, openai_error(err.status, err.message, err.headers)

    async def _engine_call(self, request: Request, what: str, call):
        """The one path of every route a vLLM engine answers: key, body, the served version, then ``call(req,
        loaded)``. A refusal after the version is known is logged under that version, on every route."""
        caller, bad = self._key(request)
        if bad is not None:
            return bad, 0, None
        loaded = None
        try:
            req = await parse_off_loop(json_object, await read_body(request, self.server.max_request_bytes), what)
            loaded = await self._for_task(caller, openai_model(req), "generate")
            return await call(req, loaded)
        except ProtocolError as err:
            return openai_error(err.status, err.message, err.headers), 0, loaded

    async def embeddings(self, request: Request):
        """-> (response, rows, loaded version or None)."""
        caller, bad = self._key(request)
        if bad is not None:
            return bad, 0, None
        try:
            body = await read_body(request, self.server.max_request_bytes)
            texts, model, fmt = await parse_off_loop(parse_embeddings_request, body)
            check_rows(len(texts), self.server.max_rows)
            loaded = await self._for_task(caller, model, "embed")
        except ProtocolError as err:
            return openai_error(err.status, err.message, err.headers), 0, None
        try:
            for i, t in enumerate(texts):
                if isinstance(t, tuple):
                    loaded.predictor.tokenizer.check_ids(t, f"'input'[{i}]")
        except ValueError as err:
            return openai_error(400, str(err), loaded.headers), 0, loaded
        emb = await self.server.run(loaded, texts)
        tokens = loaded.predictor.tokenizer.count_tokens(texts)
        request.scope["maas"]["tokens"] = (tokens, 0)  # metered, and spent of the key's token limits
        return JSONResponse(embeddings_response(emb, loaded.mv.ref, fmt, tokens), headers=loaded.headers), \
            len(texts), loaded

    def _model_card(self, served) -> dict:
        mv = served.primary.mv
        return {"id": served.name, "object": "model", "created": int(mv.created_at), "owned_by": "maas",
                "version": mv.ref, "task": mv.task}

    def models(self, request: Request) -> JSONResponse:
        """``GET /v1/models``: the served models that have a version loaded and the key may call (what
        ``model`` may name)."""
        caller, bad = self._key(request)
        if bad is not None:
            return bad
        data = [self._model_card(m) for m in self.host.models.values() if m.primary is not None and
                caller.allows(m.name)]
        return JSONResponse({"object": "list", "data": data})

    def model(self, request: Request, name: str) -> JSONResponse:
        """``GET /v1/models/{name}``: one served model, or a 404 in OpenAI's shape (a 403 for a key that may not
        call it)."""
        caller, bad = self._key(request)
        if bad is not None:
            return bad
        try:
            caller.check_model(name)
        except ProtocolError as err:
            return openai_error(err.status, err.message)
        served = self.host.models.get(name)
        if served is None or served.primary is None:
            why = "is not served here" if served is None else f"is not ready: {served.problem}"
            return openai_error(404, f"model '{name}' {why}; served: {', '.join(self.host.models) or 'none'}")
        return JSONResponse(self._model_card(served), headers=served.primary.headers)

