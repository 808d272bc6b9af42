"""How vLLM engines are configured for a registry version, and what stopped engines leave behind.

The engines themselves run inside the serving replica (``maas.serve.runtimes.vllm``). This module holds what
the serving, compression and benchmark code share: the Ray Serve LLM config of a version's engine (placement,
dtype, LoRA), which engine serves a version (an adapter: its base's, with LoRA), and the shared-memory clean-up.
"""

from __future__ import annotations

import difflib
from typing import Optional

from maas.exceptions import ServeError
from maas.spec import LLMEngineSpec

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank takes


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
    if spec.gpus():
        return "bfloat16" if signature.get("quantization") else "auto"
    return "float32"


def llm_config(store: str, mv, spec: LLMEngineSpec, lora_rank: int = 0, source: Optional[str] = None):
    """The Ray Serve LLM config of the engine that serves registry version ``mv`` from the folder ``source``
    (its verified files on the engine's node; a placeholder naming the version until then); ``lora_rank`` > 0:
    that of a base serving adapters up to this rank."""
    from ray.serve.llm import LLMConfig

    engine = {"max_num_seqs": spec.max_num_seqs, "enforce_eager": spec.enforce_eager,
              "dtype": engine_dtype(spec, mv.signature),
              "max_model_len": spec.max_model_len,  # None: the model's own context
              # a request that sets no max_tokens gets at most the cap, not the rest of the context
              "override_generation_config": {"max_new_tokens": spec.max_tokens},
              "allowed_media_domains": list(spec.allowed_media_domains) or None}
    if lora_rank:
        rank = next((r for r in LORA_RANKS if r >= max(lora_rank, spec.max_lora_rank)), LORA_RANKS[-1])
        engine.update(enable_lora=True, max_loras=spec.max_loras, max_lora_rank=rank)
    engine.update(check_engine_kwargs(spec.engine_kwargs))
    env, gpus = {}, spec.gpus()
    if gpus:
        engine.update(tensor_parallel_size=gpus, gpu_memory_utilization=spec.gpu_memory_utilization)
        accel = {"kind": "gpu"}
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{spec.kv_cache_gib:g}"
        accel = {"kind": "cpu"}
    return LLMConfig(
        model_loading_config={"model_id": mv.name, "model_source": source or f"maas:{mv.ref}"},
        accelerator_config=accel,
        placement_group_config={"bundles": [{"CPU": spec.num_cpus, **({"GPU": 1} if gpus else {})}]
                                + [{"GPU": 1}] * max(gpus - 1, 0)},
        engine_kwargs={k: v for k, v in engine.items() if v is not None},
        runtime_env={"env_vars": env} if env else None,
    )


def check_engine_kwargs(kwargs: dict, known: Optional[set] = None) -> dict:
    """``deploy.llm.engine_kwargs`` checked against the installed vLLM's engine arguments (``known``: their
    names; default: read from vLLM, which takes seconds to import, so only when there are any).

    Raises:
        ServeError: a name vLLM's engine does not take, with the closest one it does.
    """
    if not kwargs:
        return {}
    known = known if known is not None else vllm_engine_arg_names()
    problems = []
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append(f"deploy.llm.engine_kwargs.{key}: not an engine argument of the installed vLLM"
                            + (f"; did you mean '{close[0]}'?" if close else ""))
    if problems:
        raise ServeError("; ".join(problems))
    return dict(kwargs)


def vllm_engine_arg_names() -> set:
    """The names vLLM's ``AsyncEngineArgs`` takes (the ``vllm serve`` options, as Python names)."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


SHM = "/dev/shm"
_SHM_PREFIXES = ("psm_", "sem.loky-", "sem.mp-")


def shm_entries() -> set:
    """The POSIX shared-memory segments now (vLLM's engines make some and may leave them when killed)."""
    import os

    try:
        return {n for n in os.listdir(SHM) if n.startswith(_SHM_PREFIXES)}
    except OSError:
        return set()


def shm_mappers(names) -> dict:
    """{name: pids of the processes that map it} for the segments ``names`` in ``SHM``, matched by inode: a
    named semaphore is mapped under the temporary name glibc made it with (``sem.XXXXXX (deleted)``), never
    under its own, so a match by name would call a live semaphore unmapped."""
    import glob
    import os

    inodes = {}
    for name in names:
        try:
            inodes[os.stat(os.path.join(SHM, name)).st_ino] = name
        except OSError:
            continue
    found = {name: [] for name in inodes.values()}
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, errors="replace") as f:
                lines = [line.split(None, 5) for line in f if " /dev/shm/" in line or f" {SHM}/" in line]
        except OSError:
            continue
        for fields in lines:
            if len(fields) > 4 and fields[4].isdigit() and int(fields[4]) in inodes:
                found[inodes[int(fields[4])]].append(int(maps.split("/")[2]))
    return found


def release_shared_memory(before: set) -> list[str]:
    """Remove the segments made since ``before`` that no live process maps any more (what stopped engines
    left behind); returns their names. Segments in use, by any process on the machine, are kept: another
    engine starting beside this one has its semaphores mapped (by inode) while its workers attach to them."""
    import os

    leaked = sorted(name for name, pids in shm_mappers(shm_entries() - before).items() if not pids)
    for name in leaked:
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    return leaked
