"""vLLM engines for generative models, one Ray Serve LLM application per served version.

A version whose runtime is ``vllm`` is served by Ray Serve LLM's ``LLMServer`` (vLLM's async engine:
continuous batching, paged KV cache, prefix caching) in an application of its own, ``maas-llm-<name>-v<N>``,
reached only through a deployment handle from the maas ingress (which keeps API keys, aliases, canaries,
metrics and the access log in one place for every model). ``EngineServer`` adds two things to
``LLMServer``: the files are fetched and sha256-verified from the registry on the engine's own node before
vLLM reads them, and streamed chunks are forwarded as soon as one is ready, merged only with those that queued
meanwhile (Ray's fixed 50 ms batching interval costs ~50 ms of time to first token at low load).

Engines are started (``ensure_engine``) by whoever needs one first: ``maas serve`` before the ingress, or the
ingress itself when an alias moves to a version with no engine yet; the new engine is running before traffic
moves, and the old one is retired (``retire_engine``) once nothing routes to it.

A LoRA adapter version (``format: peft-lora``) has no engine of its own: its base version's engine, started
with LoRA enabled (``maas-llm-<base>-v<N>-lora``), loads it by name on first use (vLLM's multi-LoRA: the base
once, any number of adapters), the adapter's files fetched and verified on the engine's node.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from maas.exceptions import ServeError
from maas.spec import LLMEngineSpec

logger = logging.getLogger("ray.serve")
APP_PREFIX = "maas-llm-"
ENGINE = "engine"  # the deployment's name inside its application


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank takes


def engine_app_name(name: str, version: int, lora: bool = False) -> str:
    return f"{APP_PREFIX}{name}-v{version}" + ("-lora" if lora else "")


def is_adapter(mv) -> bool:
    return mv.signature.get("format") == "peft-lora"


def engine_of(mv, lora_base: bool = False) -> tuple[str, int, bool]:
    """(name, version, LoRA enabled) of the engine that serves ``mv``: its own (LoRA-enabled when
    ``lora_base``: ``deploy.llm.enable_lora``), or an adapter's base's LoRA-enabled one."""
    if not is_adapter(mv):
        return mv.name, mv.version, lora_base
    name, _, version = str(mv.signature.get("base")).partition("/")
    return name, int(version), True


def lora_name(mv) -> str:
    """The name an adapter version is loaded under in its base's engine (what requests to it name)."""
    return mv.ref


def engine_dtype(spec: LLMEngineSpec, signature: dict) -> str:
    """The dtype vLLM runs a version in: ``deploy.llm.dtype`` when set; else the one a compressed variant
    needs (``serve_dtype``: bf16 activations for w4a16 on CPU); else on GPUs bf16 for any quantized variant
    (the int8/int4 GPU kernels take half-precision activations) and the model's own dtype otherwise; float32
    on CPUs (the portable choice: bf16 needs AVX512-BF16 or AMX)."""
    if spec.dtype != "auto":
        return spec.dtype
    if signature.get("serve_dtype"):
        return signature["serve_dtype"]
    if spec.num_gpus:
        return "bfloat16" if signature.get("quantization") else "auto"
    return "float32"


def llm_config(store: str, mv, spec: LLMEngineSpec, lora_rank: int = 0):
    """The Ray Serve LLM config of the engine that serves registry version ``mv`` (``model_source`` is set on
    the engine's node); ``lora_rank`` > 0: that of a base serving adapters up to this rank."""
    from ray.serve.llm import LLMConfig

    engine = {"max_num_seqs": spec.max_num_seqs, "enforce_eager": spec.enforce_eager,
              "dtype": engine_dtype(spec, mv.signature),
              "max_model_len": spec.max_model_len}  # None: the model's own context
    if lora_rank:
        rank = next((r for r in LORA_RANKS if r >= max(lora_rank, spec.max_lora_rank)), LORA_RANKS[-1])
        engine.update(enable_lora=True, max_loras=spec.max_loras, max_lora_rank=rank)
    env = {}
    if spec.num_gpus:
        engine.update(tensor_parallel_size=spec.num_gpus, gpu_memory_utilization=spec.gpu_memory_utilization)
        accel = {"kind": "gpu"}
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{spec.kv_cache_gib:g}"
        accel = {"kind": "cpu"}
    return LLMConfig(
        model_loading_config={"model_id": mv.name, "model_source": f"maas:{mv.ref}"},
        accelerator_config=accel,
        placement_group_config={"bundles": [{"CPU": spec.num_cpus, **({"GPU": 1} if spec.num_gpus else {})}]
                                + [{"GPU": 1}] * max(spec.num_gpus - 1, 0)},
        deployment_config={"num_replicas": spec.num_replicas, "ray_actor_options": {"num_cpus": 0},
                           "health_check_period_s": 10},
        engine_kwargs={k: v for k, v in engine.items() if v is not None},
        runtime_env={"env_vars": env} if env else None,
        experimental_configs={"stream_batching_interval_ms": spec.stream_interval_ms},
    )


def build_engine_app(store: str, mv, spec: LLMEngineSpec, lora_rank: int = 0):
    from ray.serve.llm import build_llm_deployment

    from maas.serve.engine_server import EngineServer

    return build_llm_deployment(llm_config(store, mv, spec, lora_rank), deployment_cls=EngineServer,
                                bind_kwargs={"store": store, "ref": mv.ref}, override_serve_options={"name": ENGINE})


def _status(app: str) -> Optional[str]:
    from ray import serve

    found = serve.status().applications.get(app)
    return None if found is None else str(getattr(found.status, "value", found.status))


def ensure_engine(store: str, mv, spec: LLMEngineSpec):
    """A handle to the running engine of ``mv`` (an adapter's: its base's, with LoRA), starting it (and
    waiting until it answers) if there is none. Raises ServeError with the engine's own message when it
    cannot start."""
    from ray import serve

    from maas.registry import Registry

    name, version, lora = engine_of(mv, spec.enable_lora)
    app = engine_app_name(name, version, lora)
    status = _status(app)
    if status in (None, "DEPLOY_FAILED", "UNHEALTHY", "DELETING"):
        if status == "DELETING":
            _wait_gone(app, 120)
        engine_mv = Registry(store).resolve(f"{name}/{version}") if is_adapter(mv) else mv
        logger.info("maas starting the vLLM engine of %s on %s%s", engine_mv.ref, spec.placement(),
                    " with LoRA" if lora else "")
        started = time.monotonic()
        try:
            rank = int(mv.signature.get("lora_rank", 1)) if is_adapter(mv) else spec.max_lora_rank if lora else 0
            serve.run(build_engine_app(store, engine_mv, spec, rank), name=app, route_prefix=None, blocking=False)
        except Exception as exc:  # the controller's message names the engine's error
            retire_engine(mv, spec)
            raise ServeError(f"the vLLM engine of {engine_mv.ref} did not start: {_short(exc)}") from None
        logger.info("maas engine of %s is up (%.1f s)", engine_mv.ref, time.monotonic() - started)
    else:
        deadline = time.monotonic() + spec.start_timeout_s
        while status != "RUNNING":  # another replica (or maas serve) is starting it
            if status in (None, "DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
                raise ServeError(f"the vLLM engine of {mv.ref} is {status or 'gone'}; see the Serve log")
            time.sleep(0.5)
            status = _status(app)
    return EngineClient(mv, app, spec)


def retire_engine(mv, spec: Optional[LLMEngineSpec] = None) -> None:
    """Delete the engine application that serves ``mv`` (in the background: in-flight requests finish first)."""
    from ray import serve

    app = engine_app_name(*engine_of(mv, bool(spec and spec.enable_lora)))
    try:
        serve.delete(app, _blocking=False)
    except Exception as exc:  # already gone
        logger.info("maas engine %s: %s", app, exc)


def engine_apps() -> list[str]:
    from ray import serve

    return [a for a in serve.status().applications if a.startswith(APP_PREFIX)]


def _wait_gone(app: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _status(app) is not None and time.monotonic() < deadline:
        time.sleep(0.5)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


class EngineClient:
    """What the ingress keeps of a loaded generative version: the engine handle (streaming) and the limits."""

    def __init__(self, mv, app: str, spec: LLMEngineSpec):
        self.mv = mv
        self.app = app
        self._handle = None
        self.spec = spec
        self.model_id = lora_name(mv) if is_adapter(mv) else mv.name
        self.inflight = 0  # this replica's requests on the engine now (an engine is retired once idle)
        import ray.serve.llm.openai_api_models  # noqa: F401  (vLLM's request models: ~10 s to import, not on
        #                                         the first request's clock)

    @property
    def handle(self):
        """The engine's streaming handle, made on first use: on the replica's event loop, where Serve's
        high-throughput mode runs a handle's router (the alias watcher's thread, which loads versions,
        has no loop). Chunks travel as Ray actor-call streams (``_by_reference``): that mode's default, gRPC
        between replicas, held a streamed answer back until it ended (TTFT 283 ms for a 64-token answer that
        takes ~320 ms, against 30 ms behind Serve's own proxy; benchmarks/llm_serving.py)."""
        if self._handle is None:
            from ray import serve

            handle = serve.get_deployment_handle(ENGINE, app_name=self.app).options(_by_reference=True)
            # an adapter's requests carry its name twice: as the multiplexed model id (the engine replica loads
            # the adapter from the registry on first use) and as the request's model (what vLLM runs it with)
            self._handle = handle.options(stream=True, multiplexed_model_id=lora_name(self.mv)) \
                if is_adapter(self.mv) else handle.options(stream=True)
        return self._handle


SHM = "/dev/shm"
_SHM_PREFIXES = ("psm_", "sem.loky-", "sem.mp-")


def shm_entries() -> set:
    """The POSIX shared-memory segments now (vLLM's engines make some and may leave them when killed)."""
    import os

    try:
        return {n for n in os.listdir(SHM) if n.startswith(_SHM_PREFIXES)}
    except OSError:
        return set()


def release_shared_memory(before: set) -> list[str]:
    """Remove the segments made since ``before`` that no live process maps any more (what stopped engines
    left behind); returns their names. Segments still in use are kept."""
    import glob
    import os

    leaked = shm_entries() - before
    if not leaked:
        return []
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        leaked = {n for n in leaked if n not in text}
        if not leaked:
            return []
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    return sorted(leaked)
