"""vLLM engines inside the serving replica: one hop for tokens (docs/design/llm-serving.md).

A generative version (runtime ``vllm``) is answered by an engine that lives in the maas replica taking the HTTP
request: Ray Serve LLM's ``LLMServer`` (vLLM's ``AsyncLLM`` and vLLM's own OpenAI serving code) made in this
process and started on the replica's event loop. A streamed token goes from vLLM's engine process over vLLM's
own IPC into this process and out of the replica's HTTP server as the event vLLM wrote: no second Ray hop and
no re-encoding (a separate engine deployment behind a handle cost 2.6x the CPU per token and half the tokens/s
at 32 streams on 2 cores; benchmarks/llm_serving.py). On GPUs vLLM's workers are Ray actors in a placement
group the engine makes for itself (Ray Serve LLM's executor), so the replica needs no GPU and a second engine
(a canary, a roll-over) gets GPUs of its own.

Engines start in the background under maas's own clock (``deploy.llm.start_timeout_s``), and say where they are:
queued, fetching, verifying, loading, ready, or failed with the engine's error. A LoRA adapter version has no
engine of its own: its base's engine, started with LoRA enabled, loads it by name on first use (vLLM's
multi-LoRA), its files fetched and verified from the registry first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Callable, Optional

from maas.exceptions import ServeError
from maas.serve import ray_private
from maas.serve.runtimes import on_engine
from maas.serve.runtimes.vllm_config import engine_of, is_adapter, llm_config, lora_name

logger = logging.getLogger("ray.serve")
# drills (a slow model start): no engine is ready sooner than this many seconds after it was asked for
START_DELAY_ENV = "MAAS_ENGINE_START_DELAY_S"
STATES = ("queued", "fetching", "verifying", "loading", "ready", "failed")


class Engine:
    """One vLLM engine of this replica: the base version it runs (``ref``), LoRA on or off, its state."""

    def __init__(self, key: tuple, store: str, spec, lora_rank: int = 0):
        self.key, self.store, self.spec, self.lora_rank = key, store, spec, lora_rank
        self.ref = f"{key[0]}/{key[1]}"  # the base version it runs
        self.state, self.error = "queued", ""
        self.created = self.since = time.monotonic()
        self.server = None  # Ray Serve LLM's LLMServer, once made
        self.inflight = 0  # requests on the engine now (it is stopped only once idle)
        self.done = asyncio.Event()  # set on the replica's loop when ready or failed (binds to it on first use)
        self.task: Optional[asyncio.Task] = None
        self._adapters: dict[str, object] = {}  # adapter ref -> its DiskMultiplexConfig (files verified here)
        self._adapter_lock = asyncio.Lock()

    def _set(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()
        logger.info("maas engine of %s: %s", self.ref, state)

    def describe(self) -> str:
        """``loading for 12 s (started 15 s ago)`` or the failure."""
        if self.state == "failed":
            return f"failed: {self.error}"
        now = time.monotonic()
        return f"{self.state} for {now - self.since:.0f} s (started {now - self.created:.0f} s ago)"

    async def start(self, on_done: Callable[["Engine"], None]) -> None:
        """Fetch and verify the files, start vLLM; ready or failed within ``start_timeout_s``. On the loop."""
        try:
            await asyncio.wait_for(self._start(), timeout=self.spec.start_timeout_s)
            freeze_heap()
            self._set("ready")
        except asyncio.TimeoutError:
            self._fail(f"the vLLM engine of {self.ref} was still {self.state} after deploy.llm.start_timeout_s "
                       f"({self.spec.start_timeout_s:g} s); raise it for a large model, or see the replica log")
        except Exception as exc:  # the engine's own message, named as the engine's
            self._fail(f"the vLLM engine of {self.ref} did not start: {_short(exc)}")
        finally:
            self.done.set()
            on_done(self)

    async def _start(self) -> None:
        from ray.serve.llm.deployment import LLMServer

        from maas.models.vllm_kernels import check_vllm_kernels
        from maas.registry import Registry

        self._set("fetching")
        folder, mv = await asyncio.to_thread(Registry(self.store).fetch, self.ref,
                                             lambda step: self._set(step))
        if not on_engine(mv):
            raise ServeError(f"{self.ref} has runtime {mv.runtime!r}; a vLLM engine serves runtime 'vllm'")
        self._set("loading")
        await asyncio.to_thread(check_vllm_kernels, str(folder))  # raises: this machine cannot run these weights
        if not self.spec.gpus():  # vLLM reads it in the engine process it starts from here
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{self.spec.kv_cache_gib:g}"
        config = llm_config(self.store, mv, self.spec, self.lora_rank, source=str(folder))
        self.server = LLMServer.sync_init(config, engine_cls=off_loop_engine_class())
        await self.server.start()
        held = float(os.environ.get(START_DELAY_ENV) or 0) - (time.monotonic() - self.created)
        if held > 0:
            await asyncio.sleep(held)

    def _fail(self, message: str) -> None:
        self.error = message
        self._set("failed")
        logger.warning("maas %s", message)
        self.stop()  # whatever it started (an engine process, a placement group) goes

    async def wait(self) -> None:
        """Until the engine is ready. Raises ServeError with its failure."""
        await self.done.wait()
        if self.state != "ready":
            raise ServeError(self.error)

    async def use_adapter(self, mv) -> None:
        """Load adapter version ``mv`` into this (LoRA-enabled) engine on first use, its files verified here."""
        ref = lora_name(mv)
        async with self._adapter_lock:
            disk = self._adapters.get(ref)
            if disk is None:
                from maas.registry import Registry

                folder, fetched = await asyncio.to_thread(Registry(self.store).fetch_version, mv)
                if fetched.signature.get("base") != self.ref:
                    raise ServeError(f"{ref} is an adapter of {fetched.signature.get('base')}, not of {self.ref}")
                disk = adapter_config(ref, str(folder), len(self._adapters) + 1)
                self._adapters[ref] = disk
        await self.server.engine.resolve_lora(disk)

    def stream(self, kind: str, request):
        """vLLM's answer to an OpenAI request (``kind`` chat or completions): an async generator of SSE event
        strings for a stream, else one response object (or an ErrorResponse)."""
        return getattr(self.server.engine, kind)(request, None)

    def stop(self) -> None:
        """Stop vLLM's engine process and release the placement group the engine made (if any)."""
        server, self.server = self.server, None
        if server is not None:
            shutdown_engine(server)


class EngineVersion:
    """What a loaded generative version keeps (its ``predictor``): the engine that runs it, the model name its
    requests carry to that engine (an adapter's: its ref), the limits of ``deploy.llm``."""

    def __init__(self, engine: Engine, mv, spec):
        self.engine, self.mv, self.spec = engine, mv, spec
        self.adapter = is_adapter(mv)
        self.model_id = lora_name(mv) if self.adapter else mv.name


class Engines:
    """The engines of one replica, by (base name, version, LoRA): started on the replica's event loop when a
    version first needs one, shared by the versions they serve (a base and its adapters), stopped on retire."""

    def __init__(self, store: str, spec, loop: Optional[asyncio.AbstractEventLoop], on_change: Callable[[], None]):
        self.store, self.spec, self.loop, self.on_change = store, spec, loop, on_change
        self._engines: dict[tuple, Engine] = {}
        self._lock = threading.Lock()

    def key(self, mv) -> tuple:
        return engine_of(mv, self.spec.enable_lora)

    def get(self, mv) -> Engine:
        """The engine that serves ``mv`` (an adapter's: its base's), started if there is none (a failed one is
        returned as it is, until ``forget``). Safe from any thread."""
        if self.loop is None:
            raise ServeError("vLLM engines need the replica's event loop; this ModelServer has none")
        key = self.key(mv)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                rank = int(mv.signature.get("lora_rank", 1)) if is_adapter(mv) else \
                    self.spec.max_lora_rank if key[2] else 0
                engine = Engine(key, self.store, self.spec, rank)
                self._engines[key] = engine
                logger.info("maas starting the vLLM engine of %s on %s%s", engine.ref, self.spec.placement(),
                            " with LoRA" if key[2] else "")
                self.loop.call_soon_threadsafe(self._launch, engine)
        return engine

    def _launch(self, engine: Engine) -> None:  # on the loop; the task is kept so it is not collected
        engine.task = self.loop.create_task(engine.start(self._done))

    def _done(self, engine: Engine) -> None:
        self.on_change()

    def forget(self, engine: Engine) -> None:
        """Drop a failed engine, so the next ``get`` starts a new one."""
        with self._lock:
            if self._engines.get(engine.key) is engine:
                del self._engines[engine.key]

    def items(self) -> list[tuple[tuple, Engine]]:
        with self._lock:
            return list(self._engines.items())

    def retire(self, key: tuple) -> None:
        """Stop the engine ``key`` (its requests are done: the caller waits for that)."""
        with self._lock:
            engine = self._engines.pop(key, None)
        if engine is not None:
            logger.info("maas retiring the vLLM engine of %s", engine.ref)
            self.loop.call_soon_threadsafe(engine.stop)  # on the loop its engine's IPC tasks run on

    def snapshot(self) -> list[dict]:
        """What this replica's engines are doing, for readiness and the tests."""
        items = self.items()
        return [{"engine": f"{name}/{version}" + (" (LoRA)" if lora else ""), "state": e.state,
                 "detail": e.describe(), "inflight": e.inflight} for (name, version, lora), e in items]

    def stop_all(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.stop()


def freeze_heap() -> None:
    """What vLLM's own server does once its engine is up: move everything alive now (the engine's tokenizer,
    configs, torch modules) out of the garbage collector's way, so its full collections do not scan them again
    and again while tokens stream (a pause and CPU that every stream in the replica pays). Serve froze the
    replica's heap after its constructor, before any engine existed."""
    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()


def _short(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong (pydantic's last line is a link)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()
             and not line.strip().startswith("For further information")]
    return (lines[-1] if lines else type(exc).__name__)[:500]


# ---- Ray Serve LLM's private parts maas relies on, in one place (tests/unit/test_llm_parts.py checks each)

_ENGINE_CLASS = None


def off_loop_engine_class():
    """Ray Serve LLM's ``VLLMEngine``, its blocking start moved off the replica's event loop.

    ``VLLMEngine.start`` makes vLLM's ``AsyncLLM`` synchronously, and that waits for vLLM's engine process to
    load the weights, profile memory and capture graphs: minutes for a large model, during which a replica's
    loop would answer nothing (its other models, its streams, Serve's health checks). Here the engine config
    and the ``AsyncLLM`` are made in a worker thread first (vLLM starts its loop-bound tasks lazily when made
    outside a loop, and pyzmq binds sockets to the loop that first uses them), then ``start`` runs on the loop
    with both at hand."""
    global _ENGINE_CLASS
    if _ENGINE_CLASS is not None:
        return _ENGINE_CLASS
    class OffLoopVLLMEngine(ray_private.vllm_engine_class()):
        _maas_prepared = None
        _maas_client = None
        _maas_stopped = False

        def _prepare_engine_config(self, callback_ctx):
            if self._maas_prepared is None:
                self._maas_prepared = super()._prepare_engine_config(callback_ctx)
            return self._maas_prepared

        def _start_async_llm_engine(self, engine_args, engine_config, placement_group):
            if self._maas_client is None:
                self._maas_client = super()._start_async_llm_engine(engine_args, engine_config, placement_group)
            return self._maas_client

        async def start(self) -> None:
            ctx = self.llm_config.get_or_create_callback().ctx
            # the folder is one maas fetched and verified itself: Ray's per-node download tasks would only
            # start a worker process on every node of the placement group that then sits idle
            ctx.run_init_node = False

            def prepare():
                engine_args, _, engine_config = self._prepare_engine_config(ctx)
                self._start_async_llm_engine(engine_args, engine_config, ctx.placement_group)
                if self._maas_stopped:  # given up on (start_timeout_s) while this thread was making it
                    self.maas_stop()

            await asyncio.to_thread(prepare)
            await super().start()
            ray_private.adopt_tokenization(self)  # /tokenize and /detokenize

        def maas_stop(self) -> None:
            """Stop vLLM's engine process and IPC now, whether or not ``start`` got to the end."""
            self._maas_stopped = True
            client, self._maas_client = self._maas_client, None
            if client is not None:
                client.shutdown()

    _ENGINE_CLASS = OffLoopVLLMEngine
    return _ENGINE_CLASS

def adapter_config(ref: str, folder: str, int_id: int):
    """What ``VLLMEngine.resolve_lora`` takes for an adapter whose files are in ``folder``."""
    return ray_private.disk_multiplex_config(ref, folder, int_id)


def shutdown_engine(server) -> None:
    """Stop an LLMServer's vLLM engine now (its engine process and IPC) and remove the placement group Ray Serve
    LLM made for it outside the replica's own. LLMServer has no public way to stop its engine: Serve stops it
    with the replica, but a replica that retires one engine of several keeps running."""
    import ray

    engine = getattr(server, "engine", None)
    if engine is not None:
        try:
            engine.maas_stop()
        except Exception as exc:  # already gone
            logger.warning("maas engine shutdown: %s", exc)
    pg = ray_private.engine_placement_group(server)
    if pg is not None and pg != ray.util.get_current_placement_group():
        try:
            ray.util.remove_placement_group(pg)
        except Exception as exc:  # already removed
            logger.info("maas engine placement group: %s", exc)
