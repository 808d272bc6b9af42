"""The engine replica of a generative version: Ray Serve LLM's ``LLMServer`` loading a registry version whose
files were verified on this node, and streaming without a timer (see ``maas.serve.llm_engine``). Imported only
where LLMs are served: it imports Ray Serve LLM."""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator

from ray.serve.llm.deployment import LLMServer

from maas.exceptions import ServeError


class EngineServer(LLMServer):
    async def __init__(self, llm_config, store: str = "", ref: str = ""):
        from maas.registry import Registry

        folder, mv = await asyncio.to_thread(Registry(store).fetch, ref)  # every file's sha256 checked here
        if mv.runtime != "vllm":
            raise ServeError(f"{ref} has runtime {mv.runtime!r}; a vLLM engine serves runtime 'vllm'")
        llm_config.model_loading_config.model_source = str(folder)
        llm_config._engine_config = None  # Ray Serve LLM derived it from the placeholder source: derive again
        self.maas_ref, self.maas_store = ref, store
        self._maas_loras: dict = {}  # adapter ref -> its DiskMultiplexConfig (files fetched on this node)
        self._maas_lora_lock = asyncio.Lock()
        await super().__init__(llm_config)

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        """An adapter version's request (its ref as the multiplexed model id): fetch and verify the adapter
        from the registry on first use, then have vLLM load it under that name (a no-op once loaded)."""
        from ray import serve

        ref = serve.get_multiplexed_model_id()
        if not ref:
            return
        async with self._maas_lora_lock:
            disk = self._maas_loras.get(ref)
            if disk is None:
                from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

                from maas.registry import Registry

                folder, mv = await asyncio.to_thread(Registry(self.maas_store).fetch, ref)
                if mv.signature.get("base") != self.maas_ref:
                    raise ServeError(f"{ref} is an adapter of {mv.signature.get('base')}, not of {self.maas_ref}")
                disk = DiskMultiplexConfig(model_id=ref, local_path=str(folder), max_total_tokens=None,
                                           lora_assigned_int_id=len(self._maas_loras) + 1)
                self._maas_loras[ref] = disk
        await self.engine.resolve_lora(disk)

    def _batch_output_stream(self, generator):
        interval_ms = self._llm_config.experimental_configs.get("stream_batching_interval_ms") or 0
        return coalesce(generator, interval_ms / 1e3)


async def coalesce(generator: AsyncGenerator, interval_s: float = 0.0) -> AsyncGenerator[list, None]:
    """Yield the generator's items as lists: the first item as soon as it is ready (the first token is never
    held back), later ones at most every ``interval_s``, each list holding every item that queued meanwhile
    (fewer, larger messages through the handle: on a busy CPU each message costs the engine time)."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump():
        try:
            async for item in generator:
                queue.put_nowait(item)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(end)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            items = [b for b in batch if b is not end and not isinstance(b, BaseException)]
            if items:
                yield items
                if interval_s > 0 and batch[-1] is not end:
                    await asyncio.sleep(interval_s)
            for b in batch:
                if isinstance(b, BaseException):
                    raise b
            if batch[-1] is end:
                return
    finally:
        task.cancel()
