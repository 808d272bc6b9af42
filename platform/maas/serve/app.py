"""The Ray Serve deployment: a thin shell that routes each request and accounts for it.

One application serves one or more models (``maas.serve.hosting``: aliases followed in place, canaries,
pinned versions), answers the routes of ``maas.serve.routes`` through one handler module per protocol
(``oip_handlers``: Open Inference Protocol v2; ``openai_handlers``:
``/v1/completions``, ``/v1/embeddings``), fuses concurrent requests (``maas.serve.batcher``), and counts, times
and logs every model request (Prometheus metrics through Ray, one JSON access-log line with the request id).
Every client mistake is a 4xx in its protocol's error shape; the replica never dies of a bad request. Model
routes need ``Authorization: Bearer <key>`` when API keys are configured; health routes stay open.
"""

import asyncio
import inspect
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from maas.serve.accounting import Accounting
from maas.serve.batcher import Batcher
from maas.serve.errors import ProtocolError, answer, error_for
from maas.serve.hosting import VERSION_HEADER, ModelHost
from maas.serve.http import request_id
from maas.serve.limits import Limits
from maas.serve.metering import UsageMeter
from maas.serve.openapi import openapi_document
from maas.serve.protocols.admin import AdminHandlers
from maas.serve.protocols.oip.grpc_service import OIPGrpc
from maas.serve.protocols.oip.handlers import OIPHandlers
from maas.serve.protocols.openai.batches import BatchHandlers
from maas.serve.protocols.openai.handlers import OpenAIHandlers
from maas.serve.routes import NOT_FOUND_HINT, Router
from maas.serve.tenancy import KeyRing

logger = logging.getLogger("ray.serve")
OFFLOAD_MS = 1.0  # a version whose forwards average more than this runs them in the replica's model thread
BATCH_MIN_MS = 0.1  # a version whose forwards average less is never fused: the batch's bookkeeping costs more
__all__ = ["VERSION_HEADER", "ModelServer"]


def _timed_call(fn, x):
    started = time.perf_counter()
    out = fn(x)
    return out, (time.perf_counter() - started) * 1e3


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class ModelServer:
    def __init__(self, store: str, models, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.0,
                 max_request_bytes: int = 4 * 1024 * 1024, api_key_hashes: Optional[list] = None,
                 alias_poll_s: float = 2.0, max_pinned_versions: int = 2, llm: Optional[dict] = None,
                 pinned_loads_per_minute: int = 10, max_rows_per_request: int = 65536,
                 max_batch_file_bytes: int = 100 * 1024 * 1024):
        try:  # Serve runs the constructor on the loop that serves requests: where vLLM engines must start
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside a replica (tests): in-process predictors only
            loop = None
        self.host = ModelHost(store, models, max_pinned_versions, llm, alias_poll_s, pinned_loads_per_minute, loop)
        self.router = Router()
        self.max_request_bytes = max_request_bytes
        self.max_rows = max_rows_per_request
        self.keys = KeyRing(store, api_key_hashes or [])  # unnamed keys and the store's named ones
        self.limits = Limits()  # named keys' request and token limits, across replicas
        self.meter = UsageMeter(store)  # usage per key, model, version and hour, written to the store
        self.batching = max_batch_size > 1
        self.active = 0  # model requests in this replica now
        self.batcher = Batcher(self._predict_batch, max_batch_size, batch_wait_timeout_s)
        self.accounting = Accounting()  # metrics and access log, off the request path
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maas-forward")
        oip, openai = OIPHandlers(self.host, self), OpenAIHandlers(self.host, self)
        batches = BatchHandlers(self.host, self, max_batch_file_bytes)  # OpenAI's Batch API
        admin = AdminHandlers(self.host, self)  # keys, aliases and usage over HTTP, for admin keys
        self.grpc = OIPGrpc(self.host, oip, self)  # the same models and answers over gRPC (Serve's gRPC proxy)
        # handler name (maas.serve.routes) -> (callable, a model request: counted, timed and logged)
        self.handlers = {
            "completions": (openai.completions, True), "chat_completions": (openai.chat, True),
            "embeddings": (openai.embeddings, True),
            "tokenize": (openai.tokenize, True), "detokenize": (openai.detokenize, True),
            "infer": (oip.infer, True),
            "metadata": (oip.metadata, False), "model_ready": (oip.model_ready, False),
            "server_metadata": (oip.server_metadata, False), "live": (oip.live, False), "ready": (oip.ready, False),
            "models": (oip.models, False), "openai_models": (openai.models, False),
            "openai_model": (openai.model, False), "openapi": (self._openapi, False),
            "create_file": (batches.create_file, False), "file": (batches.file, False),
            "file_content": (batches.file_content, False), "create_batch": (batches.create_batch, False),
            "batches": (batches.batches, False), "batch": (batches.batch, False),
            "cancel_batch": (batches.cancel, False), "usage": (admin.usage, False),
            "list_keys": (admin.list_keys, False), "create_key": (admin.create_key, False),
            "get_key": (admin.get_key, False), "revoke_key": (admin.revoke_key, False),
            "rotate_key": (admin.rotate_key, False), "aliases": (admin.aliases, False),
            "set_alias": (admin.set_alias, False)}
        self.openapi = json.dumps(openapi_document()).encode()  # from the route table: every route described
        self.host.start(alias_poll_s)
        self.keys.start(alias_poll_s)
        logger.info("maas serving %s from %s; api keys: %s", self.host.describe(), store,
                    "required" if self.keys.required else "off")

    def __del__(self):
        host = getattr(self, "host", None)
        if host is not None:
            host.stop()
        keys = getattr(self, "keys", None)
        if keys is not None:
            keys.stop()
        accounting = getattr(self, "accounting", None)
        if accounting is not None:
            accounting.close()
        meter = getattr(self, "meter", None)
        if meter is not None:
            meter.close()
        pool = getattr(self, "model_thread", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def maas_status(self) -> dict:
        """This replica's view, for ``deploy`` and the tests (a handle call): per served model ready or why
        not, and its vLLM engines with their state."""
        from ray import serve as _serve

        try:
            replica = _serve.get_replica_context().replica_id.unique_id
        except Exception:  # not inside a replica
            replica = ""
        return {"replica": replica, **self.host.status()}

    def _openapi(self, request: Request) -> Response:
        return Response(self.openapi, media_type="application/json")

    async def __call__(self, request: Request):
        """Route by method and path (``maas.serve.routes``: a table, not FastAPI, ~0.5 ms less per request on
        2 cores); a miss is a 405 with ``allow`` or a 404, in the path's protocol's error shape."""
        path = request.scope.get("path", "/")
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        match = self.router.match(request.method, path)
        if match.handler is None:
            error = error_for(match.protocol)
            if match.allow:
                return error(405, f"{request.method} is not allowed on {path}; use {' or '.join(match.allow)}",
                             {"allow": ", ".join(match.allow)})
            return error(404, f"no route {request.method} {path}; {NOT_FOUND_HINT}")
        handler, model_request = self.handlers[match.handler]
        if model_request:
            return await self._timed(match, request, handler, path)
        try:
            response = handler(request, **match.params)
            return await response if inspect.isawaitable(response) else response
        except ProtocolError as err:
            return answer(err, match.protocol)
        except Exception:  # a fault, not a client mistake: JSON in the route's shape, the replica keeps serving
            rid = request_id(request)
            logger.exception("maas %s %s failed (request %s)", request.method, path, rid)
            return error_for(match.protocol)(500, f"internal error on {path}; request id {rid}")

    async def _timed(self, match, request: Request, handler, path: str):
        """Run one model request, ``handler(request, **params)`` -> (response, rows, loaded): counted, timed
        and logged whatever happens (a streamed answer is timed until its stream starts)."""
        started = time.perf_counter()
        rid = request_id(request)
        name = match.params.get("name")
        rows, loaded = 0, None
        request.scope["maas"] = {"rid": rid, "path": path, "started": started}
        self.active += 1
        try:
            await self.limits.admit(self.keys.check_request(request))  # 401 / 429 before any work
            response, rows, loaded = await handler(request, **match.params)
        except ProtocolError as err:
            response = answer(err, match.protocol)
        except Exception:  # a server fault, not a client mistake: answer JSON, keep serving, log it
            logger.exception("maas inference failed (request %s)", rid)
            response = error_for(match.protocol)(
                500, f"internal error while serving {name or path}; request id {rid}")
        finally:
            self.active -= 1
        if not getattr(response, "maas_deferred", False):  # a token stream is accounted when it ends
            ctx = request.scope["maas"]
            extra = {"key": ctx["key"]} if "key" in ctx else None  # the named key's, when one asked
            if "tokens" in ctx:  # what the engine or tokenizer counted
                extra = {**(extra or {}), "prompt_tokens": ctx["tokens"][0], "completion_tokens": ctx["tokens"][1]}
            self.record(name, loaded, response.status_code, rid, path, rows, (time.perf_counter() - started) * 1e3,
                        extra, ctx)
        return response

    def record(self, name: Optional[str], loaded, status: int, rid: Optional[str], path: str, rows: int,
               elapsed_ms: float, extra: Optional[dict] = None, ctx: Optional[dict] = None) -> None:
        """Count, time, log and meter one model request (HTTP status; a gRPC call's status in HTTP terms);
        ``extra``: more fields for its access-log line (its key's name, a token stream's TTFT, TPOT and tokens);
        ``ctx``: the request's scope (its caller's token limits are spent what ``charge`` has not yet)."""
        tags = loaded.tags if loaded is not None else {"model": name if name in self.host.models else "-",
                                                       "version": "-"}
        self.accounting.request(tags, status, rid, path, rows, elapsed_ms, extra)
        extra = extra or {}
        prompt, completion = extra.get("prompt_tokens", 0), extra.get("completion_tokens", 0)
        self.meter.add(extra.get("key"), tags["model"], tags["version"], status, rows, prompt, completion)
        if ctx is not None:
            self.charge(ctx, prompt + completion - ctx.get("charged", 0))

    def charge(self, ctx: dict, tokens: int) -> None:
        """Spend ``tokens`` of the request's caller's token limits (a stream's as its events pass)."""
        if tokens <= 0:
            return
        ctx["charged"] = ctx.get("charged", 0) + tokens
        caller = ctx.get("caller")
        if caller is not None and caller.limits:
            self.limits.spend(caller, tokens)

    # ---- Open Inference Protocol over gRPC: Serve's gRPC proxy calls the method named like the RPC
    async def ServerLive(self, request, grpc_context=None):  # noqa: N802 (RPC names)
        return await self.grpc.call("ServerLive", request, grpc_context)

    async def ServerReady(self, request, grpc_context=None):  # noqa: N802
        return await self.grpc.call("ServerReady", request, grpc_context)

    async def ServerMetadata(self, request, grpc_context=None):  # noqa: N802
        return await self.grpc.call("ServerMetadata", request, grpc_context)

    async def ModelReady(self, request, grpc_context=None):  # noqa: N802
        return await self.grpc.call("ModelReady", request, grpc_context)

    async def ModelMetadata(self, request, grpc_context=None):  # noqa: N802
        return await self.grpc.call("ModelMetadata", request, grpc_context)

    async def ModelInfer(self, request, grpc_context=None):  # noqa: N802
        return await self.grpc.call("ModelInfer", request, grpc_context)

    async def run(self, loaded, x):
        """One model call: fused with others' when some are mid-request and the version's forwards are slow
        enough to gain from it, else straight (no queue hop). A batch's bookkeeping (a future, the batch
        task, two wake-ups) costs a request ~50-100 us of replica CPU (digits int8, 0.02 ms forwards: 76-80%
        of bare Ray Serve's req/s at c=8 and 32 fused, 84-89% straight, same run)."""
        if self.batching and self.active > 1 and loaded.forward_ms > BATCH_MIN_MS:
            return await self.batcher.submit((loaded, x))
        self.accounting.batch(loaded.tags, len(x))
        return await self.forward(loaded, x)

    async def forward(self, loaded, x):
        """``loaded.predictor(x)``: inline while the version's forwards are quick (a thread hop costs more
        than a 0.012 ms digits forward), else in the replica's one model thread (ONNX Runtime and torch free
        the GIL), so the event loop keeps reading requests meanwhile: health checks answer, and the requests
        that arrive during a forward are parsed and queued and fill the next batch instead of waiting to be
        read one by one after it."""
        if loaded.forward_ms <= OFFLOAD_MS:
            out, ms = _timed_call(loaded.predictor, x)
        else:
            out, ms = await asyncio.get_running_loop().run_in_executor(self.model_thread, _timed_call,
                                                                       loaded.predictor, x)
        loaded.forward_ms += 0.2 * (ms - loaded.forward_ms)
        return out

    async def _predict_batch(self, items: list) -> list:
        """One queue for every model version; each version's rows fused into one forward."""
        groups: dict = {}
        for i, (loaded, _) in enumerate(items):
            groups.setdefault(id(loaded), (loaded, []))[1].append(i)
        out: list = [None] * len(items)
        for loaded, idx in groups.values():
            parts = [items[i][1] for i in idx]
            fused = parts[0] if len(idx) == 1 else \
                [t for p in parts for t in p] if isinstance(parts[0], list) else np.concatenate(parts)
            self.accounting.batch(loaded.tags, len(fused))
            logits = await self.forward(loaded, fused)
            start = 0
            for i in idx:
                n = len(items[i][1])
                out[i] = logits[start:start + n]
                start += n
        return out
