"""``/v1/completions`` and ``/v1/chat/completions`` for generative versions served by a vLLM engine.

The request is checked here (the caps on ``n`` / ``best_of`` / ``max_tokens``, the shape of ``messages``, the
request model's own validation) and handed to the version's vLLM engine in this replica
(``maas.serve.runtimes.vllm``); what the engine answers is passed on as vLLM wrote it: one JSON object, or
server-sent events ending in ``data: [DONE]``. The engine's own refusals (a prompt over the context window,
...) keep their status and message in OpenAI's error shape. Usage is always taken from the engine
(``stream_options.include_usage`` is set on the way in and the usage event dropped on the way out when the
client did not ask for it): it feeds the per-version token counters. Time to first token and time per output
token are measured twice: as the client gets them (from the request's arrival) and as the engine makes them
(from the hand-over to it), as metrics and in a stream's access-log line, written when the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Optional

from starlette.responses import StreamingResponse

from maas.serve.errors import ProtocolError, openai_error
from maas.serve.http import JSONResponse

logger = logging.getLogger("ray.serve")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TOKEN_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


INT64 = 2 ** 63 - 1
MAX_STOPS, MAX_STOP_CHARS = 16, 256


def _check_caps(req: dict, spec) -> None:
    """The request's work is bounded before the engine sees it: integers, stop strings, n, max_tokens, the
    sequences it makes, and whether it may force an answer's length. Raises ProtocolError 400 naming the field."""
    for field, value in req.items():  # 10**400 as seed or top_k would overflow in the engine (a 500)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
            raise ProtocolError(400, f"'{field}' is out of range (a 64-bit integer at most)")
    stop = req.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > MAX_STOPS or any(not isinstance(s, str) or len(s) > MAX_STOP_CHARS for s in stops):
        raise ProtocolError(400, f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
    for field in ("n", "best_of"):
        value = req.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > spec.max_n:
            raise ProtocolError(400, f"'{field}' is {value}; this server allows at most {spec.max_n}")
    for field in ("max_tokens", "max_completion_tokens"):
        value = req.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > spec.max_tokens:
            raise ProtocolError(400, f"'{field}' is {value}; this server allows at most {spec.max_tokens}")
    per_prompt = max(_count(req.get("n")), _count(req.get("best_of")))
    sequences = _prompts(req.get("prompt")) * per_prompt
    if sequences > spec.max_sequences:
        raise ProtocolError(400, f"the request makes {sequences} sequences (prompts x n); this server allows at "
                                 f"most {spec.max_sequences}: send fewer prompts per request")
    if not spec.allow_forced_length:
        for field in ("ignore_eos", "min_tokens"):
            if req.get(field):
                raise ProtocolError(400, f"'{field}' is not allowed here: answers end where the model ends them "
                                         f"(deploy.llm.allow_forced_length)")


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _prompts(prompt) -> int:
    """How many prompts ``prompt`` is: a string or one list of token ids is one; a list of those is its length."""
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return 1


MEDIA_PARTS = ("image_url", "audio_url", "video_url", "file")


def _check_messages(messages, spec) -> None:
    if not isinstance(messages, list) or not messages:
        raise ProtocolError(400, "'messages' must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ProtocolError(400, f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ProtocolError(400, f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ProtocolError(400, f"messages[{i}].content must be a string or a list of content parts")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            _check_media(part, f"messages[{i}].content[{j}]", spec.allowed_media_domains)


def _check_media(part, where: str, allowed: list) -> None:
    """A content part's media URL: a ``data:`` URL, or http(s) on a host of ``allowed`` (the engine fetches it;
    any other host, a link-local metadata address among them, is refused before it can)."""
    from urllib.parse import urlsplit

    if not isinstance(part, dict):
        return
    for kind in MEDIA_PARTS:
        media = part.get(kind)
        url = media.get("url", media.get("file_data")) if isinstance(media, dict) else media
        if not isinstance(url, str) or url.startswith("data:"):
            continue
        parsed = urlsplit(url)
        host = (parsed.hostname or "").lower()
        if parsed.scheme in ("http", "https") and any(host == d or host.endswith("." + d) for d in allowed):
            continue
        raise ProtocolError(400, f"{where}.{kind}: media from {parsed.scheme or '?'}://{host or '?'} is not allowed "
                                 "here; send it as a data: URL" + (f" or from {', '.join(allowed)}" if allowed
                                                                   else " (deploy.llm.allowed_media_domains)"))


def _validation_message(err) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))


def _usage(chunk: str) -> Optional[dict]:
    try:
        return json.loads(chunk[len("data: "):]).get("usage")
    except ValueError:
        return None


class LLMHandlers:
    """Hands OpenAI requests to the engine of the loaded version (in this replica) and accounts for them."""

    def __init__(self, record, charge):
        from ray.serve import metrics

        self.record = record  # ModelServer.record: the access-log line, metrics and usage of a finished stream
        self.charge = charge  # ModelServer.charge: a stream's tokens, spent of its key's limits as they pass
        tags = ("model", "version")
        self.m_tokens = metrics.Counter("maas_llm_tokens_total", description="Prompt and completion tokens.",
                                        tag_keys=(*tags, "kind"))
        self.m = {}
        for stage, what in (("", "as the client gets them: from the request's arrival at maas"),
                            ("engine_", "as the vLLM engine makes them: from the request's hand-over to it")):
            self.m[f"{stage}ttft"] = metrics.Histogram(
                f"maas_llm_{stage}time_to_first_token_ms", description=f"Time to first token (ms), {what}.",
                boundaries=TOKEN_MS, tag_keys=tags)
            self.m[f"{stage}tpot"] = metrics.Histogram(
                f"maas_llm_{stage}time_per_output_token_ms", boundaries=TOKEN_MS, tag_keys=tags,
                description=f"Time per output token after the first (ms), {what}.")

    async def run(self, kind: str, req: dict, loaded, ctx: dict):
        """``kind`` "chat" or "completions" -> (response, rows, loaded). ``ctx``: the request's id, path and
        arrival time (a stream's access-log line is written when it ends, with its token figures)."""
        from pydantic import ValidationError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        version = loaded.predictor
        _check_caps(req, version.spec)
        if kind == "chat":
            _check_messages(req.get("messages"), version.spec)
        elif not isinstance(req.get("prompt"), (str, list)):
            raise ProtocolError(400, "'prompt' is missing: a string, a list of strings or of token ids")
        stream = req.get("stream") is True
        options = req.get("stream_options") if isinstance(req.get("stream_options"), dict) else {}
        body = {**req, "model": version.model_id}
        if stream:  # usage always comes from the engine; the client sees it only when it asked
            body["stream_options"] = {**options, "include_usage": True}
        try:
            request = (ChatCompletionRequest if kind == "chat" else CompletionRequest).model_validate(body)
        except ValidationError as err:
            raise ProtocolError(400, _validation_message(err)) from None
        except (ValueError, TypeError) as err:
            raise ProtocolError(400, str(err)) from None
        engine = version.engine
        engine.inflight += 1
        try:
            if version.adapter:
                await engine.use_adapter(version.mv)
            handed = time.perf_counter()
            out = engine.stream(kind, request)
            first = await out.__anext__()
        except StopAsyncIteration:
            engine.inflight -= 1
            raise ProtocolError(503, f"the engine of {loaded.mv.ref} answered nothing; try again") from None
        except Exception as exc:
            engine.inflight -= 1
            logger.warning("maas engine of %s failed: %s", loaded.mv.ref, exc)
            raise ProtocolError(503, f"the engine of {loaded.mv.ref} is unavailable; try again") from None
        if not isinstance(first, str):  # one answer, or the engine's refusal
            engine.inflight -= 1
            await out.aclose()
            error = _error_of(first)
            if error is not None:
                return error, 0, loaded
            data = first.model_dump(mode="json", exclude_none=True)
            self._count(loaded, data.get("usage"))
            usage = data.get("usage") or {}
            ctx["tokens"] = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            return JSONResponse(data, headers=loaded.headers), 1, loaded
        timing = {"arrived": ctx["started"], "handed": handed, "first": time.perf_counter()}
        response = StreamingResponse(self._events(first, out, loaded, bool(options.get("include_usage")), timing,
                                                  ctx), media_type="text/event-stream",
                                     headers={**loaded.headers, "cache-control": "no-cache"})
        response.maas_deferred = True  # accounted when the stream ends (ModelServer._timed)
        return response, 1, loaded

    async def tokens(self, kind: str, req: dict, loaded):
        """``kind`` "tokenize" (``prompt`` or ``messages``) or "detokenize" (``tokens``), answered by the engine
        that serves ``loaded`` with its own tokenizer (and chat template) -> (response, rows, loaded)."""
        from pydantic import ValidationError

        from maas.serve.ray_private import tokenization_requests

        TokenizeCompletionRequest, TokenizeChatRequest, DetokenizeRequest = tokenization_requests()
        version = loaded.predictor
        if kind == "detokenize":
            if not isinstance(req.get("tokens"), list):
                raise ProtocolError(400, "'tokens' is missing: a list of token ids")
            model = DetokenizeRequest
        elif "messages" in req:
            _check_messages(req["messages"], version.spec)
            model = TokenizeChatRequest
        elif isinstance(req.get("prompt"), str):
            model = TokenizeCompletionRequest
        else:
            raise ProtocolError(400, "'prompt' (a string) or 'messages' is missing")
        try:
            request = model.model_validate({**req, "model": version.model_id})
        except ValidationError as err:
            raise ProtocolError(400, _validation_message(err)) from None
        if version.adapter:
            await version.engine.use_adapter(version.mv)
        out = version.engine.stream(kind, request)
        try:
            answer = await out.__anext__()
        except StopAsyncIteration:
            raise ProtocolError(503, f"the engine of {loaded.mv.ref} answered nothing; try again") from None
        finally:
            await out.aclose()
        error = _error_of(answer)
        if error is not None:
            return error, 0, loaded
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True), headers=loaded.headers), 1, loaded

    async def _events(self, item: str, out, loaded, wants_usage: bool, t: dict, ctx: dict):
        """vLLM's own SSE events, passed on as they come (no re-encoding); the usage event the client did not
        ask for is dropped. Times each event's arrival from the engine and its hand-over to the client."""
        interval = loaded.predictor.spec.stream_interval_ms / 1e3
        usage, done, status, sent_first = None, False, 200, None
        last_in = last_out = t["first"]
        try:
            while True:
                if '"usage"' in item and '"choices":[]' in item:
                    usage = _usage(item) or usage
                    if usage:  # the engine's count, before the client can see the stream end and ask again
                        self.charge(ctx, int(usage.get("prompt_tokens") or 0) +
                                    int(usage.get("completion_tokens") or 0) - ctx.get("charged", 0))
                    if wants_usage:
                        yield item
                else:
                    done = done or item.startswith("data: [DONE]")
                    if not done:
                        self.charge(ctx, 1)  # an event carries a token at least; the rest when it ends
                    yield item
                last_out = time.perf_counter()
                if sent_first is None:
                    sent_first = last_out
                if interval:  # vLLM merges the tokens made meanwhile into the next event
                    await asyncio.sleep(interval)
                try:
                    item = await out.__anext__()
                except StopAsyncIteration:
                    break
                last_in = time.perf_counter()
                if not isinstance(item, str):  # an object mid-stream: say so and stop
                    err = _error_of(item)
                    message = json.loads(err.body)["error"] if err is not None else {"message": str(item)}
                    yield "data: " + json.dumps({"error": message}) + "\n\n"
                    status = 500
                    break
        except (GeneratorExit, asyncio.CancelledError):  # the client went away: logged as nginx and Serve do
            status = 499
            raise
        except Exception:  # mid-stream the status is sent: end the stream with an error event
            logger.exception("maas generation failed mid-stream (%s)", loaded.mv.ref)
            status = 500
            yield "data: " + json.dumps({"error": {"message": "generation failed; see the replica log",
                                                   "type": "server_error", "code": 500}}) + "\n\n"
        finally:
            loaded.predictor.engine.inflight -= 1
            await out.aclose()  # the client went away, or the stream ended: vLLM aborts what is left
            self._finish(loaded, usage, t, sent_first, last_in, last_out, status, ctx)
        if not done:
            yield "data: [DONE]\n\n"

    def _finish(self, loaded, usage, t: dict, sent_first, last_in: float, last_out: float, status: int,
                ctx: dict) -> None:
        """A stream's metrics and access-log line: TTFT and TPOT as the client got them and as the engine made
        them, and its tokens."""
        tokens = self._count(loaded, usage)
        figures = {"ttft": (sent_first or last_out) - t["arrived"], "engine_ttft": t["first"] - t["handed"]}
        if tokens > 1:
            figures["tpot"] = (last_out - (sent_first or last_out)) / (tokens - 1)
            figures["engine_tpot"] = (last_in - t["first"]) / (tokens - 1)
        extra = {f"{k}_ms": round(v * 1e3, 3) for k, v in figures.items()}
        for k, v in figures.items():
            self.m[k].observe(v * 1e3, tags=loaded.tags)
        if usage:
            extra.update(prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=tokens)
        elif ctx.get("charged"):  # cut short before the engine's count (the client went away): its events
            extra.update(completion_tokens=ctx["charged"])
        if ctx.get("key"):
            extra["key"] = ctx["key"]
        self.record(loaded.mv.name, loaded, status, ctx["rid"], ctx["path"], 1,
                    (last_out - t["arrived"]) * 1e3, extra, ctx)

    def _count(self, loaded, usage: Optional[dict]) -> int:
        """Count the request's tokens; returns the completion tokens."""
        if not usage:
            return 0
        completion = int(usage.get("completion_tokens") or 0)
        for kind, count in (("prompt", int(usage.get("prompt_tokens") or 0)), ("completion", completion)):
            if count > 0:
                self.m_tokens.inc(count, tags={**loaded.tags, "kind": kind})
        return completion


def _error_of(item) -> Optional[JSONResponse]:
    """The engine's ErrorResponse as OpenAI's error shape with its status; None for anything else."""
    error = getattr(item, "error", None)
    if error is None or not hasattr(error, "message"):
        return None
    code = getattr(error, "code", None)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    response = openai_error(status, str(error.message))
    if getattr(error, "param", None):
        body = json.loads(response.body)
        body["error"]["param"] = error.param
        response = JSONResponse(body, status_code=status)
    return response
