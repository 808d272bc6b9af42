"""Waiting for a deployed application to serve, on maas's own clock.

Serve's ``serve.run`` waits for the application and then, with a fixed 60 s limit, for its proxies; a vLLM
engine's start (weights, memory profiling, compilation, graph capture) can take minutes, and a missed limit
says "Proxies not available" instead of what went wrong. maas deploys without those waits and watches itself:
the application's status (a replica that cannot start fails the deploy with Serve's message), every replica's
models (vLLM engines start in the background and report fetching, verifying, loading, ready, or their error),
then the public URL's liveness route, within ``deploy.llm.start_timeout_s`` when engines start, else
``DEFAULT_TIMEOUT_S``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from maas.exceptions import ServeError

DEFAULT_TIMEOUT_S = 300.0
REPORT_EVERY_S = 30.0


def app_status(name: str) -> tuple[Optional[str], str]:
    """(status, message) of application ``name`` (None: no such application)."""
    from ray import serve

    found = serve.status().applications.get(name)
    if found is None:
        return None, ""
    return str(getattr(found.status, "value", found.status)), str(getattr(found, "message", "") or "")


def wait_until_serving(name: str, url: str, replicas: int, engine_timeout_s: Optional[float],
                       progress: Callable[[str], None]) -> None:
    """Return once application ``name`` is running, ``replicas`` replicas have answered with no vLLM engine
    still starting, and ``url`` answers; raise ServeError naming what failed, or what it was still doing when
    time ran out (``engine_timeout_s``: the engines' own limit, when the application runs any)."""
    deadline = time.monotonic() + DEFAULT_TIMEOUT_S
    watch = _Progress(progress)
    while True:
        status, message = app_status(name)
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServeError(f"application {name!r} failed to start: {message or status}; see the Serve log")
        if status == "RUNNING":
            break
        watch.say(f"application {name}: {(status or 'not created yet').lower()}")
        _check_time(deadline, f"application {name!r} was still {status or 'not created'}")
        time.sleep(0.5)
    if engine_timeout_s is not None:  # an engine fails itself at its limit, with its state: this is a backstop
        deadline = time.monotonic() + engine_timeout_s + 60
    from ray import serve

    handle = serve.get_app_handle(name)
    try:
        _wait_for_replicas(handle, replicas, deadline, watch)
    finally:
        handle.shutdown()  # its router would poll the controller and push metrics for as long as we live
    _wait_for_url(url, deadline, watch)


def _wait_for_replicas(handle, replicas: int, deadline: float, watch: "_Progress") -> None:
    """Until ``replicas`` distinct replicas answered with no engine starting (each call reaches one of them)."""
    seen: dict[str, dict] = {}
    while True:
        state = _replica_status(handle)
        if state["replica"] is None:  # no answer this time
            watch.say(state["problem"])
        else:
            seen[state["replica"]] = state
        for m in (m for s in seen.values() for m in s["models"].values()):
            if m.get("engine_error"):
                raise ServeError(m["engine_error"])
            if m.get("starting"):
                watch.say(m["problem"])
        if not _starting(seen) and len(seen) >= replicas:
            break
        _check_time(deadline, "; ".join(m["problem"] for m in _starting(seen)) or
                    f"{len(seen)} of {replicas} replicas answered")
        time.sleep(0.5)


class _Progress:
    """Says a line when its gist changes (the seconds counters in it aside), or every REPORT_EVERY_S."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress, self.last, self.at = progress, None, 0.0

    def say(self, line: str) -> None:
        import re

        gist = re.sub(r"\d+ s\b", "", line)
        if gist != self.last or time.monotonic() - self.at > REPORT_EVERY_S:
            self.progress(line)
            self.last, self.at = gist, time.monotonic()


def _replica_status(handle) -> dict:
    """One replica's models and engines (whichever replica the handle picks)."""
    try:
        return handle.maas_status.remote().result(timeout_s=30)
    except Exception as exc:  # a replica restarting: say so, ask again
        return {"replica": None, "problem": f"asking a replica: {type(exc).__name__}: {exc}"}


def _starting(seen: dict) -> list[dict]:
    return [m for s in seen.values() for m in s["models"].values() if m.get("starting")]


def _wait_for_url(url: str, deadline: float, watch: _Progress, limit_s: float = 60.0) -> None:
    """The liveness route answers through the public address (HAProxy or Serve's proxy has the replicas). The
    replicas serve by now: an address that this machine cannot reach (a proxy bound to another interface, a
    job on another node) gets ``limit_s`` and a warning, not a failed deploy."""
    import logging

    import requests

    deadline = min(deadline, time.monotonic() + limit_s)
    while True:
        try:
            r = requests.get(f"{url}/v2/health/live", timeout=5)
            if r.status_code == 200:
                return
            why = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            why = type(exc).__name__
        if time.monotonic() > deadline:
            logging.getLogger("maas").warning("maas: the replicas serve, but %s does not answer from here (%s)",
                                              url, why)
            return
        watch.say(f"waiting for {url} to answer ({why})")
        time.sleep(0.5)


def _check_time(deadline: float, doing: str) -> None:
    if time.monotonic() > deadline:
        raise ServeError(f"deploy timed out: {doing}; for a large model raise deploy.llm.start_timeout_s")
