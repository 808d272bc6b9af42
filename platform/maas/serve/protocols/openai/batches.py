"""OpenAI's Batch API on the endpoint: ``POST /v1/files`` (purpose ``batch``: JSON Lines, multipart, size-capped),
``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``, ``GET /v1/batches[/{id}]`` and ``POST
/v1/batches/{id}/cancel``, as the unmodified ``openai`` client calls them.

Files and batches live in the registry's store (``maas.serve.protocols.openai.files``), so every replica and node
sees them; a batch runs as a maas batch (``maas.batch.openai_run``: Ray Data LLM's vLLM engine with this
endpoint's engine settings, or an encoder's actor pool for ``/v1/embeddings``) in a detached Ray actor of its
own, which outlives the request and the replica that started it; a batch found not ended with no live actor is
launched again (``revive``) and goes on from what it wrote. The actor runs the batch layer's entry point by its
name (``RUNNER``), as Ray runs a job by its command: the serving layer, below the batch layer, never imports it.
Every route needs an API key when keys are configured, and a key sees only its own files and batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from starlette.requests import Request
from starlette.responses import Response

from maas.serve.errors import ProtocolError
from maas.serve.http import JSONResponse, read_body
from maas.serve.protocols.oip.codec import json_object
from maas.serve.protocols.openai.files import ENDPOINTS, OWNER, TERMINAL, BatchStore, new_id, public

RUNNER = "maas.batch.openai_run:run_openai_batch"  # (store, batch id): its arguments are in its run file
NAMESPACE = "maas-batches"  # the batches' actors, named maas-{batch id}
MAX_LAUNCHES = 3  # a batch whose run is lost more often than this fails
MAX_LINES = 50_000  # OpenAI's cap on requests per batch
WINDOWS = ("24h",)


class BatchHandlers:
    def __init__(self, host, server, max_file_bytes: int):
        self.host, self.server, self.max_file_bytes = host, server, max_file_bytes
        self.files = BatchStore(host.registry.location)

    def _owner(self, request: Request) -> str:
        """Who asks: the digest of their API key, or ``open`` on an endpoint without keys (401 otherwise)."""
        return self._caller(request).digest

    def _caller(self, request: Request):
        return self.server.keys.check(request.headers.get("authorization"))

    async def create_file(self, request: Request) -> JSONResponse:
        owner = self._owner(request)
        body = await read_body(request, self.max_file_bytes)
        form = await _form(request, body)
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise ProtocolError(400, f"'purpose' must be 'batch' (the only purpose served here), got {purpose!r}")
        if upload is None or isinstance(upload, str):
            raise ProtocolError(400, "'file' must be a file part of a multipart/form-data body")
        data = await upload.read()
        lines = len(data.strip().splitlines()) if data.strip() else 0
        if not 1 <= lines <= MAX_LINES:
            raise ProtocolError(400, f"'file' must hold 1 to {MAX_LINES:,} JSON lines, got {lines:,}")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(400, f"'file' must be UTF-8 JSON Lines (byte {err.start} is not UTF-8)") from None
        obj = await asyncio.to_thread(self.files.put_file, owner, upload.filename or "batch.jsonl", purpose, data)
        return JSONResponse(public(obj))

    async def file(self, request: Request, file_id: str) -> JSONResponse:
        return JSONResponse(public(await self._owned(request, "file", file_id)))

    async def file_content(self, request: Request, file_id: str) -> Response:
        await self._owned(request, "file", file_id)
        data = await asyncio.to_thread(self.files.content, file_id)
        return Response(data, media_type="application/jsonl")

    async def _owned(self, request: Request, kind: str, object_id: str) -> dict:
        """The asking key's file or batch ``object_id``, or a 404 (another key's is not found either)."""
        obj = await asyncio.to_thread(getattr(self.files, kind), self._owner(request), object_id)
        if obj is None:
            raise ProtocolError(404, f"no {kind} {object_id!r} (of this API key)")
        return obj

    async def create_batch(self, request: Request) -> JSONResponse:
        caller = self._caller(request)
        await self.server.limits.admit(caller)  # a batch is one request of its key's limits
        owner = caller.digest
        req = json_object(await read_body(request, self.server.max_request_bytes), "'input_file_id' and 'endpoint'")
        endpoint, window = req.get("endpoint"), req.get("completion_window", "24h")
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise ProtocolError(400, f"'endpoint' must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
        if not isinstance(window, str) or window not in WINDOWS:
            raise ProtocolError(400, f"'completion_window' must be one of {', '.join(WINDOWS)}, got {window!r}")
        metadata = req.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or
                                     not all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())):
            raise ProtocolError(400, "'metadata' must map at most 16 keys to texts of at most 512 characters")
        source = await asyncio.to_thread(self.files.file, owner, str(req.get("input_file_id")))
        if source is None or source["purpose"] != "batch":
            raise ProtocolError(404, f"no batch input file {req.get('input_file_id')!r} (of this API key); upload "
                                     "one with POST /v1/files, purpose 'batch'")
        served = self._served(endpoint)
        denied = sorted(n for n in served if not caller.allows(n))  # its lines are 403 error lines
        served = {n: ref for n, ref in served.items() if n not in denied}
        if not served and not denied:
            here = ", ".join(f"{n} ({m.primary.mv.task})" for n, m in self.host.models.items() if m.primary)
            raise ProtocolError(400, f"no model served here answers {endpoint}; served: {here or 'none'}")
        obj = new_batch(endpoint, source["id"], window, metadata, owner)
        run = {"served": served, "denied": denied, "llm": self.host.llm.model_dump(), "launches": 0,
               "key": caller.name}  # its usage is metered under the key's name when it ends
        await asyncio.to_thread(self.files.put_batch, obj)
        obj = await asyncio.to_thread(launch, self.files, obj, run)
        return JSONResponse(public(obj))

    def _served(self, endpoint: str) -> dict:
        """{model name: the version it is served with now} of the models here that answer ``endpoint``: the
        encoders for embeddings, the models a vLLM engine answers for the rest."""
        from maas.serve.runtimes import on_engine

        def answers(mv) -> bool:
            return mv.task == "embed" if endpoint == "/v1/embeddings" else on_engine(mv)

        return {name: m.primary.mv.ref for name, m in self.host.models.items()
                if m.primary is not None and answers(m.primary.mv)}

    async def batch(self, request: Request, batch_id: str) -> JSONResponse:
        obj = await self._owned(request, "batch", batch_id)
        return JSONResponse(public(await asyncio.to_thread(revive, self.files, obj)))

    async def batches(self, request: Request) -> JSONResponse:
        """``GET /v1/batches[?limit=&after=]``: this key's batches, newest first."""
        owner = self._owner(request)
        limit = request.query_params.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise ProtocolError(400, f"'limit' must be a whole number from 1 to 100, got {limit!r}")
        found = await asyncio.to_thread(lambda: [revive(self.files, b) for b in self.files.batches(owner)])
        after = request.query_params.get("after")
        if after:
            ids = [b["id"] for b in found]
            found = found[ids.index(after) + 1:] if after in ids else []
        page = found[:int(limit)]
        return JSONResponse({"object": "list", "data": [public(b) for b in page],
                             "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
                             "has_more": len(found) > len(page)})

    async def cancel(self, request: Request, batch_id: str) -> JSONResponse:
        obj = await self._owned(request, "batch", batch_id)
        if obj["status"] in TERMINAL and obj["status"] != "cancelled":
            raise ProtocolError(409, f"batch {batch_id} is {obj['status']}: only a batch that has not ended can be "
                                     "cancelled")
        if obj["status"] not in ("cancelling", "cancelled"):
            obj = await asyncio.to_thread(self.files.cancel, batch_id)
        return JSONResponse(public(obj))


def new_batch(endpoint: str, input_file_id: str, window: str, metadata: Optional[dict], owner: str) -> dict:
    """A batch's object as OpenAI answers it when made (``validating``), with its owner."""
    now = int(time.time())
    return {"id": new_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": window, "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86_400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": metadata, OWNER: owner}


def launch(files: BatchStore, obj: dict, run: dict) -> dict:
    """Start the batch's run in a detached actor of its own (no CPU: its Ray Data stages take theirs) unless one
    runs it already; a batch launched ``MAX_LAUNCHES`` times fails, named. Ray restarts the actor and retries
    its run once when its process or node dies; past that, ``revive`` launches it again."""
    import ray

    if run["launches"] >= MAX_LAUNCHES:
        return files.fail(obj["id"], f"its run was lost {run['launches']} times (its process or node died); "
                                       "create the batch again")
    files.put_run(obj["id"], {**run, "launches": run["launches"] + 1})
    job = ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)(BatchJob)
    try:
        job.options(name=f"maas-{obj['id']}", namespace=NAMESPACE, lifetime="detached").remote().run.remote(
            files.store, obj["id"])
    except ValueError:  # another replica launched it meanwhile: the name is taken
        pass
    return obj


def revive(files: BatchStore, obj: dict) -> dict:
    """A batch that has not ended and whose run is gone (its actor died past its restart, or the Ray cluster
    that ran it did) is launched again: its run goes on from what it wrote. The batch's object, fresh."""
    import ray

    if obj["status"] in TERMINAL or not ray.is_initialized():
        return obj
    try:
        ray.get_actor(f"maas-{obj['id']}", namespace=NAMESPACE)
        return obj
    except ValueError:  # no live actor of that name
        pass
    fresh = files.batch(None, obj["id"])  # it may have ended between the read and the look-up
    if fresh["status"] in TERMINAL:
        return fresh
    return launch(files, fresh, files.run_args(obj["id"]) or {"served": {}, "launches": 0})


class BatchJob:
    """One OpenAI batch's run (``maas.batch.openai_run``); the actor ends with it."""

    def run(self, store: str, batch_id: str) -> None:
        import importlib

        import ray

        module, _, name = RUNNER.partition(":")
        try:
            getattr(importlib.import_module(module), name)(store, batch_id)
        finally:
            ray.actor.exit_actor()


async def _form(request: Request, body: bytes):
    """The multipart form of ``body`` (read already, within the size cap)."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProtocolError(400, "POST /v1/files takes multipart/form-data with 'file' and 'purpose' parts")
    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=8)
    except Exception as err:  # python-multipart's and Starlette's parse errors
        raise ProtocolError(400, f"the multipart body cannot be read: {err}") from None

