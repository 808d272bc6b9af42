"""A real Ray head started by the tests (`ray start --head --block`), on which maas is NOT installed.

The head runs under a Python that sees every library of this environment but not maas itself, so jobs only
work if the submission ships the code (working_dir for `ray job submit`, py_modules for maas.Client).
The head is ended by its own PID (``--block`` takes its child processes down with it), never `ray stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

VENV_BIN = Path(sys.executable).parent


def _python_without_maas(root: Path) -> Path:
    """A venv whose site-packages point at ours through a .pth line; our editable maas finder is not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([str(python), "-c", "import ray, torch; import maas"], capture_output=True, text=True,
                           cwd="/")
    assert "No module named 'maas'" in probe.stderr, probe.stderr
    return python


@pytest.fixture(scope="session")
def ray_head():
    base = Path(tempfile.mkdtemp(prefix="maas-head-", dir="/tmp"))
    python = _python_without_maas(base / "venv")
    dash, gcs = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dash, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    cmd = [str(python), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus", "4",
           "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--temp-dir", str(base / "ray"),
           "--object-store-memory", str(400 * 1024 * 1024)]
    for flag, port in ports.items():
        cmd += [flag, str(port)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{python.parent}:{env['PATH']}"  # `python` in job entrypoints is the maas-less one
    log = open(base / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(base),
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    from maas.submit import Client, JobError

    deadline = time.time() + 120
    while True:
        try:
            Client(address).jobs()
            break
        except JobError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"ray head did not come up; log:\n{(base / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
    yield {"address": address, "python": python, "base": base}
    proc.terminate()  # --block: ray start ends its own processes on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()
    shutil.rmtree(base, ignore_errors=True)
