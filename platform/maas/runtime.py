"""Connecting to Ray: an embedded local instance when no address is given, a cluster otherwise."""

from __future__ import annotations

import os
from typing import Optional

from maas.ports import free_port

# Settings of the embedded local Ray (a value already in the environment wins; a cluster keeps Ray's own):
# - its Serve has no load balancer in front of its HAProxy, which is on this machine and reloads within a
#   second: a stopping replica need not stay reachable for Ray's 30 s deregistration window
#   (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S), which every Ctrl-C of `maas run` / `maas serve` waited out;
# - Serve's controller reconciles every 0.5 s (Ray: 0.1 s) and replicas export Serve's metrics every 1 s (Ray:
#   0.1 s): on a small machine these loops are CPU that serving needs (streaming 32 LLM completions on 2 cores:
#   the Serve and Ray processes around the replica 239 -> 178 ms CPU per 1,000 tokens, 2,014 -> 2,360 tokens/s,
#   one run each; docs/design/llm-serving.md); deploys and roll-overs react up to 0.4 s later, and metrics
#   are scraped every 10 s or more anyway.
# - Ray's log monitor (it forwards what workers print) looks for new worker log files every 0.1 s while a node has
#   fewer than 1,000 of them, globbing the whole logs folder each time; a node keeps two files per worker it ever
#   started, so the longer it lives the more each look costs. Looking every 2 s (the first lines of a new worker
#   reach the driver up to 2 s later; lines of a file already found still every 0.1 s): its CPU 1.1% -> 0.4% of a
#   core on a fresh node, 9.6% -> 4.3% with 300 worker logs (docs/design/ray-runtime.md).
LOG_MONITOR_ENV = {"LOG_NAME_UPDATE_INTERVAL_S": "2", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}
LOCAL_RAY_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
                 "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
                 **LOG_MONITOR_ENV}


def ensure_ray(address: Optional[str] = None, quiet: bool = True, worker_logs: Optional[bool] = None,
               runtime_env: Optional[dict] = None) -> bool:
    """Make sure this process is connected to Ray; returns True if this call started a local instance.

    With no ``address`` and no ``RAY_ADDRESS``, a private local Ray is started in-process (``address="local"``,
    so an unrelated head on this machine is never joined by accident). Ray 2.60 token authentication stays
    on: the local instance creates its token (``~/.ray/auth_token``) and clients of a cluster read it from
    there or from ``RAY_AUTH_TOKEN``. The local instance's environment takes ``LOCAL_RAY_ENV`` where it
    sets none of it (a stopping Serve replica drains for 2 s, not a cluster's 30; Serve's control loops run
    less often). ``quiet`` hides Ray's own INFO logs and progress bars; ``worker_logs`` (default: not quiet)
    forwards what workers print, e.g. the per-epoch progress of training.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if quiet:
        import logging

        from ray.data import DataContext

        for name in ("ray.data", "ray.train", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # also silences "progress bars disabled"
        DataContext.get_current().enable_progress_bars = False
    kwargs = dict(logging_level="WARNING", log_to_driver=(not quiet) if worker_logs is None else worker_logs)
    if address is None:
        for name, value in LOCAL_RAY_ENV.items():  # Ray's processes inherit this process's environment
            os.environ.setdefault(name, value)
        ray.init(address="local", include_dashboard=False, **kwargs)
        return True
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
    return False


def start_head(base: str, python: Optional[str] = None, num_cpus: Optional[int] = None,
               env: Optional[dict] = None, extra_args: tuple = (), timeout_s: float = 120):
    """A private Ray head, `ray start --head --block` on free ports under ``base``; returns (process, Jobs URL).

    Every port is chosen free (an in-process `ray.init()` always binds its job agent to 52365, which collides
    with any other Ray on the machine). End it with ``stop_head(process)``: `--block` takes the head's
    processes down with it, so nothing else on the machine is touched.

    Raises:
        RuntimeError: the head exited or its dashboard did not answer within ``timeout_s``.
    """
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests

    base_path = Path(base)
    base_path.mkdir(parents=True, exist_ok=True)
    dashboard = free_port()
    cmd = [python or sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
           "--disable-usage-stats", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--temp-dir", str(base_path / "ray")]
    for flag in ("--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--ray-client-server-port", "--node-manager-port",
                 "--object-manager-port"):
        cmd += [flag, str(free_port())]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    cmd += list(extra_args)
    head_env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}
    # On SIGTERM a Ray 2.60 head first drains its node for up to 30 s so that load balancers in front of Serve
    # can move away; a private head has none in front and is stopped when its work is done, and that drain held
    # every `maas submit` on an embedded Ray for 30 s after its job had finished (3 s without it).
    head_env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    for name, value in LOG_MONITOR_ENV.items():  # a private head's log monitor looks for new files every 2 s
        head_env.setdefault(name, value)
    log_path = base_path / "head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=head_env, cwd=str(base_path),
                                start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + timeout_s
    while True:  # the dashboard answers (401 without a token is an answer too)
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray head did not start; {log_path} ends with:\n{log_path.read_text()[-2000:]}")
        try:
            requests.get(f"{url}/api/version", timeout=2)
            return proc, url
        except requests.RequestException:
            if time.monotonic() > deadline:
                stop_head(proc)
                raise RuntimeError(f"the Ray head did not open its dashboard within {timeout_s:g} s; "
                                   f"log: {log_path}") from None
            time.sleep(0.5)


def stop_head(proc) -> None:
    """End a head from ``start_head`` by its PID (SIGTERM, then SIGKILL to its process group)."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    proc.terminate()  # `ray start --block` ends its own processes on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
