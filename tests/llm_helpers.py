"""What tests of vLLM engines share: which engines an application's replica runs now, and what every test that
starts engines does when it ends: check no engine process it started is left once its applications are gone,
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
    """No vLLM buffer made since ``shm_before`` by this test process (its Ray, the CLIs it ran, their engines)
    is left: each is removed once no process maps it (the last engine process may still be exiting). A buffer
    that only other processes map (a test process beside this one and its engines, another user's engine) is
    theirs, not one left here."""
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries

    deadline = time.time() + timeout_s
    while True:
        release_shared_memory(shm_before)
        left = [n for n in shm_entries() - shm_before if n.startswith("psm_") and not _mapped_by_others_only(n)]
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert not left, sorted(left)  # vLLM's buffers; semaphores are bytes


def _ours(p) -> bool:
    """A process this test process started, directly or not, orphaned since or not: it carries this test
    process's MAAS_TEST_SESSION (tests/conftest.py) in its environment; or the test process itself."""
    import os

    import psutil

    try:
        return p.pid == os.getpid() or p.environ().get("MAAS_TEST_SESSION") == os.environ["MAAS_TEST_SESSION"]
    except psutil.Error:
        return False


def _mapped_by_others_only(name: str) -> bool:
    """Whether some process maps the segment ``name`` and none of them is this test process's."""
    import psutil

    from maas.serve.runtimes.vllm_config import shm_mappers

    pids = shm_mappers([name]).get(name, [])
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return bool(processes) and not any(_ours(p) for p in processes)


def _no_engine_processes_left(timeout_s: float) -> None:
    """Engine processes (vLLM's EngineCore and workers) die with their replica: none that this test process
    started is left, orphaned ones included."""
    import psutil

    deadline = time.time() + timeout_s
    while True:
        left = [p for p in psutil.process_iter() if _is_engine(p) and _ours(p)]
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
