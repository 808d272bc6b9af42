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
from pathlib import Path

import pytest

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
    from maas.runtime import start_head, stop_head

    base = Path(tempfile.mkdtemp(prefix="maas-head-", dir="/tmp"))
    python = _python_without_maas(base / "venv")
    env = dict(os.environ)
    env["PATH"] = f"{python.parent}:{env['PATH']}"  # `python` in job entrypoints is the maas-less one
    proc, address = start_head(str(base), python=str(python), num_cpus=4, env=env,
                               extra_args=("--object-store-memory", str(400 * 1024 * 1024)))
    yield {"address": address, "python": python, "base": base, "pid": proc.pid}
    stop_head(proc)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_serve_left_in_the_shared_ray():
    """e2e tests start Ray clusters of their own on this machine; a Serve left running in the session's
    shared Ray by the integration tier would sit beside theirs (two Serve instances in the high-throughput
    mode on one machine share replica port ranges)."""
    import ray

    if ray.is_initialized():
        from maas.serve.deploy import stop_serve

        stop_serve()
    yield
