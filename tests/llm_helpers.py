"""What every test that starts vLLM engines does when it ends: wait for the engine applications to go, check no
engine process of this Ray is left, and remove the shared memory the engines left (tests clean up what they
start)."""

from __future__ import annotations

import time


def engines_gone_and_shared_memory_released(shm_before: set, timeout_s: float = 60) -> None:
    from maas.serve.llm_engine import engine_apps, release_shared_memory, shm_entries

    deadline = time.time() + timeout_s
    while engine_apps() and time.time() < deadline:
        time.sleep(1)
    assert not engine_apps()
    _no_engine_processes_left(timeout_s)
    while True:  # a segment is removed once no process maps it: the last engine process may still be exiting
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
