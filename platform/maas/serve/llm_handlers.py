"""``/v1/completions`` and ``/v1/chat/completions`` for generative versions served by a vLLM engine.

The request is checked here (the caps on ``n`` / ``best_of`` / ``max_tokens``, the shape of ``messages``, the
request model's own validation) and forwarded through the engine's deployment handle; what the engine answers
is passed on as it comes: one JSON object, or server-sent events ending in ``data: [DONE]``. The engine's
own refusals (a prompt over the context window, ...) keep their status and message in OpenAI's error shape.
Usage is always taken from the engine (``stream_options.include_usage`` is set on the way in and the usage
chunk dropped on the way out when the client did not ask for it): it feeds the per-version token counters,
time to first token and time per output token.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

from starlette.responses import StreamingResponse

from maas.serve.http import JSONResponse, openai_error
from maas.serve.oip import ProtocolError

logger = logging.getLogger("ray.serve")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TOKEN_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


INT64 = 2 ** 63 - 1
MAX_STOPS, MAX_STOP_CHARS = 16, 256


def _check_caps(req: dict, spec) -> None:
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


def _check_messages(messages) -> None:
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
    """Forwards OpenAI requests to the engine of the loaded version and accounts for the tokens."""

    def __init__(self):
        from ray.serve import metrics

        tags = ("model", "version")
        self.m_tokens = metrics.Counter("maas_llm_tokens_total", description="Prompt and completion tokens.",
                                        tag_keys=(*tags, "kind"))
        self.m_ttft = metrics.Histogram("maas_llm_time_to_first_token_ms", description="Time to first token (ms).",
                                        boundaries=TOKEN_MS, tag_keys=tags)
        self.m_tpot = metrics.Histogram("maas_llm_time_per_output_token_ms",
                                        description="Time per output token after the first (ms).",
                                        boundaries=TOKEN_MS, tag_keys=tags)

    async def run(self, kind: str, req: dict, loaded):
        """``kind`` "chat" or "completions" -> (response, rows, loaded)."""
        from pydantic import ValidationError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        engine = loaded.predictor
        _check_caps(req, engine.spec)
        if kind == "chat":
            _check_messages(req.get("messages"))
        elif not isinstance(req.get("prompt"), (str, list)):
            raise ProtocolError(400, "'prompt' is missing: a string, a list of strings or of token ids")
        stream = req.get("stream") is True
        options = req.get("stream_options") if isinstance(req.get("stream_options"), dict) else {}
        wants_usage = bool(options.get("include_usage"))
        body = {**req, "model": engine.model_id}
        if stream:
            body["stream_options"] = {**options, "include_usage": True}
        try:
            request = (ChatCompletionRequest if kind == "chat" else CompletionRequest).model_validate(body)
        except ValidationError as err:
            raise ProtocolError(400, _validation_message(err)) from None
        except (ValueError, TypeError) as err:
            raise ProtocolError(400, str(err)) from None
        started = time.perf_counter()
        engine.inflight += 1
        try:
            gen = getattr(engine.handle, kind).remote(request, None)
            first = await gen.__anext__()
        except StopAsyncIteration:
            engine.inflight -= 1
            raise ProtocolError(503, f"the engine of {loaded.mv.ref} answered nothing; try again") from None
        except Exception as exc:
            engine.inflight -= 1
            logger.warning("maas engine of %s failed: %s", loaded.mv.ref, exc)
            raise ProtocolError(503, f"the engine of {loaded.mv.ref} is unavailable; try again") from None
        items = first if isinstance(first, list) else [first]
        error = _error_of(items[0])
        if error is not None or not stream:
            engine.inflight -= 1
            gen.cancel()
            if error is not None:
                return error, 0, loaded
            data = items[0].model_dump(mode="json", exclude_none=True)
            self._account(loaded, data.get("usage"), None, None)
            return JSONResponse(data, headers=loaded.headers), 1, loaded
        return StreamingResponse(self._events(items, gen, loaded, wants_usage, started), media_type="text/event-stream",
                                 headers={**loaded.headers, "cache-control": "no-cache"}), 1, loaded

    async def _events(self, items: list, gen, loaded, wants_usage: bool, started: float):
        first_at = last_at = None
        usage, done, failed = None, False, False
        try:
            while True:
                out = []
                for item in items:
                    if not isinstance(item, str):  # an error (or object) mid-stream: say so and stop
                        err = _error_of(item)
                        message = json.loads(err.body)["error"] if err is not None else {"message": str(item)}
                        out.append("data: " + json.dumps({"error": message}) + "\n\n")
                        failed = True
                        break
                    if item.startswith('data: {') and '"choices":[]' in item and '"usage"' in item:
                        usage = _usage(item) or usage
                        if not wants_usage:
                            continue
                    done = done or item.startswith("data: [DONE]")
                    out.append(item)
                if out:
                    last_at = time.perf_counter()
                    if first_at is None:
                        first_at = last_at
                    yield "".join(out)
                if failed:
                    break
                try:
                    nxt = await gen.__anext__()
                except StopAsyncIteration:
                    break
                items = nxt if isinstance(nxt, list) else [nxt]
        except Exception:  # mid-stream the status is sent: end the stream with an error event
            logger.exception("maas generation failed mid-stream (%s)", loaded.mv.ref)
            yield "data: " + json.dumps({"error": {"message": "generation failed; see the replica log",
                                                   "type": "server_error", "code": 500}}) + "\n\n"
        finally:
            loaded.predictor.inflight -= 1
            gen.cancel()  # the client went away, or the stream ended: nothing left to compute
            self._account(loaded, usage, first_at and first_at - started, last_at and first_at and last_at - first_at)
        if not done:
            yield "data: [DONE]\n\n"

    def _account(self, loaded, usage: Optional[dict], ttft_s: Optional[float], decode_s: Optional[float]) -> None:
        tags = loaded.tags
        if ttft_s is not None:
            self.m_ttft.observe(ttft_s * 1e3, tags=tags)
        if not usage:
            return
        completion = int(usage.get("completion_tokens") or 0)
        for kind, count in (("prompt", int(usage.get("prompt_tokens") or 0)), ("completion", completion)):
            if count > 0:
                self.m_tokens.inc(count, tags={**tags, "kind": kind})
        if decode_s is not None and completion > 1:
            self.m_tpot.observe(decode_s * 1e3 / (completion - 1), tags=tags)


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
