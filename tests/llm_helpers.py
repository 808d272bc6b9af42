"""What tests of vLLM engines share: which engines an application's replica runs now, and what every test that
starts engines does when it ends: check no engine process of this Ray is left once its applications are gone,
and remove the shared memory the engines left (tests clean up what they start)."""

from __future__ import annotations

import time


def app_engines(app: str) -> list[str]:
    """The vLLM engines the (one) replica of maas application ``app`` runs: ``["tiny/1"]``, ``["lm/1 (LoRA)"]``."""
    from ray import serve

    return sorted(e["engine"] for e in serve.get_app_handle(app).maas_status.remote().result()["engines"])


def engines_gone_and_shared_memory_released(shm_before: set, timeout_s: float = 60) -> None:
    _no_engine_processes_left(timeout_s)
    shared_memory_released(shm_before, timeout_s)


def shared_memory_released(shm_before: set, timeout_s: float = 60) -> None:
    """No vLLM buffer made since ``shm_before`` is left: each is removed once no process maps it (the last
    engine process may still be exiting)."""
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries

    deadline = time.time() + timeout_s
    while True:
        release_shared_memory(shm_before)
        left = shm_entries() - shm_before
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert not [n for n in left if n.startswith("psm_")], sorted(left)  # vLLM's buffers; semaphores are bytes


def _no_engine_processes_left(timeout_s: float) -> None:
    """Engine processes (vLLM's EngineCore and workers) die with their replica: none of this Ray's is left."""
    import psutil
    from ray._private.worker import _global_node

    raylet = psutil.Process(_global_node.all_processes["raylet"][0].process.pid)
    deadline = time.time() + timeout_s
    while True:
        left = [p for p in raylet.children(recursive=True) if _is_engine(p)]
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert not left, [p.pid for p in left]


def _is_engine(p) -> bool:
    """An engine process; one that exits while it is looked at is not one left."""
    import psutil

    try:
        return "EngineCore" in " ".join(p.cmdline()) or "VLLM" in p.name()
    except psutil.Error:
        return False
