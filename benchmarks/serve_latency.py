"""Serving overhead: maas's OIP endpoint vs a bare Ray Serve deployment vs the model call alone, same run.

The model is the digits MLP (64-128-64-10) as int8 ONNX, as `maas run` serves it, or (`--model large`) a
64-4096-4096-10 fp32 torch MLP whose one-row forward is memory-bound, where batching pays. Three Serve applications
on one local Ray: maas with dynamic batching, maas without (max_batch_size=1), and a bare deployment that
parses the same JSON and calls the same predictor. Load comes from another process on this machine, one
single-row request at a time per client on keep-alive connections, for `--seconds` per cell: wrk when it is
on PATH (`apt-get install wrk`; C, about a tenth of a Python client's CPU per request), else asyncio aiohttp
clients; either runs at the niceness Ray gives its workers (15), so it never outranks the server for the
cores. Every cell is visited once per round (`--rounds`) and medians are reported, with each application's
replica CPU per request (user + system, from the replica processes), a figure the machine's noise moves less.

    python benchmarks/serve_latency.py [--seconds 5] [--concurrency 1,8,32] [--model digits|large]
                                       [--proxy default,throughput] [--load auto|wrk|aiohttp] [--rounds 3]
                                       [--replicas 1] [--keys]

``--keys`` adds maas with batching in a store holding a named API key (``maas keys``: limited to the model, and
with request limits per minute and per day, too high to refuse anything but counted), every request carrying
it: what the key check and the limits cost against the same application without keys.

Each ingress mode (`deploy.proxy`: Serve's Python proxy, or the high-throughput mode: HAProxy in front of
replicas that take HTTP directly) runs on a fresh Serve instance, the three applications side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_model(folder: Path, size: str = "digits") -> tuple[dict, str]:
    """(files, runtime) of the served model: the digits MLP as int8 ONNX, or a large fp32 torch MLP whose
    single-row forward is memory-bound (every row streams all weights), the case batching exists for."""
    import torch

    from maas.compress import compress_model
    from maas.models import build_model as build
    from maas.models.artifacts import export_onnx, save_torch_model

    torch.manual_seed(0)
    if size == "large":
        config = {"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [4096, 4096], "dropout": 0.0}
        return save_torch_model(build(config), config, folder / "large"), "torch"
    model = build({"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [128, 64], "dropout": 0.0})
    (variant,) = compress_model(["int8_dynamic"], export_onnx(model, 64, folder / "fp32.onnx"), folder)
    return variant.files, "onnxruntime"


def _load_process(url: str, body: bytes, concurrency: int, seconds: float, nice: int, out, auth: str = "") -> None:
    """Closed-loop load from one process: `concurrency` asyncio clients on keep-alive connections."""
    import asyncio
    import os

    import aiohttp

    os.nice(nice - os.nice(0))

    async def run():
        latencies, errors = [], 0
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop = time.perf_counter() + seconds

            async def client():
                nonlocal errors
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    async with session.post(url, data=body, headers={"Authorization": auth} if auth else None) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - started

    out.put(asyncio.run(run()))


def load_aiohttp(url: str, body: bytes, concurrency: int, seconds: float, nice: int, auth: str = "") -> dict:
    """The load from a separate Python process (so the client's Python does not share this one's GIL)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(url, body, concurrency, seconds, nice, queue, auth))
    proc.start()
    latencies, errors, elapsed = queue.get(timeout=seconds + 120)
    proc.join()
    ms = np.array(latencies) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "rps": len(latencies) / elapsed, "n": len(latencies), "errors": errors}


WRK_SCRIPT = """local f = io.open(os.getenv("MAAS_BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("MAAS_BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
"""


def load_wrk(url: str, body: bytes, concurrency: int, seconds: float, nice: int, auth: str = "") -> dict:
    """The same closed loop from wrk (C, one thread, epoll): a tenth of aiohttp's CPU per request, so on a
    2-core machine the server, not the load generator, sets the pace."""
    import os
    import re
    import subprocess

    folder = Path(tempfile.mkdtemp(prefix="maas-wrk-"))
    (folder / "body.json").write_bytes(body)
    (folder / "post.lua").write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
                          "-s", str(folder / "post.lua"), url], capture_output=True, text=True, check=True,
                         env={**os.environ, "MAAS_BENCH_BODY": str(folder / "body.json"), "MAAS_BENCH_AUTH": auth},
                         preexec_fn=lambda: os.nice(nice - os.nice(0))).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def percentile(p: str) -> float:
        value, suffix = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * unit[suffix]

    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return {"p50": percentile(50), "p99": percentile(99), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)",
                                                                                 out).group(1)),
            "n": n, "errors": errors}


def replica_cpu_s(app: str) -> float:
    """User + system CPU seconds so far of the Serve replicas of application ``app`` on this machine."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if cmd.startswith(f"ray::ServeReplica:{app}:"):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
    return total


def server_niceness() -> int:
    """The niceness Ray gives its worker processes (the replicas, HAProxy): the load runs at the same, so it
    never outranks the server for the two cores (at niceness 0 a Python load generator took what it wanted
    and the replicas ran in what was left)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if " ".join(proc.info["cmdline"] or ()).startswith("ray::ServeReplica:"):
            try:
                return proc.nice()
            except psutil.Error:
                continue
    return 0


def main() -> None:
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--model", choices=["digits", "large"], default="digits",
                    help="digits: the int8 ONNX MLP that `maas run` serves; large: a 64-4096-4096-10 fp32 torch MLP")
    ap.add_argument("--proxy", default="default,throughput",
                    help="Serve ingress modes to measure, each on a fresh Serve (deploy.proxy values)")
    ap.add_argument("--load", choices=["auto", "wrk", "aiohttp"], default="auto",
                    help="load generator: wrk (when on PATH: auto) or asyncio aiohttp clients")
    ap.add_argument("--rounds", type=int, default=3, help="visit every cell this many times; medians reported")
    ap.add_argument("--replicas", type=int, default=1, help="replicas of each application (bare and maas alike)")
    ap.add_argument("--keys", action="store_true", help="also maas with batching behind a named API key")
    args = ap.parse_args()
    tool = ("wrk" if shutil.which("wrk") else "aiohttp") if args.load == "auto" else args.load
    load = load_wrk if tool == "wrk" else load_aiohttp

    import ray
    from ray import serve
    from starlette.requests import Request

    from maas.models import classifier_signature, load_predictor
    from maas.registry import Registry
    from maas.serve import build_app
    from maas.serve.deploy import start_serve, stop_serve
    from maas.spec import DeploySpec

    tmp = Path(tempfile.mkdtemp(prefix="maas-serve-bench-"))
    files, runtime = build_model(tmp, args.model)
    folder = str(next(iter(files.values())).parent)
    reg = Registry(str(tmp / "store"))
    reg.publish("digits", files, runtime=runtime, signature=classifier_signature(64, list(range(10))))

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Bare:
        def __init__(self, path: str, runtime: str):
            self.predictor = load_predictor(path, runtime, "classify")

        async def __call__(self, request: Request):
            t = (await request.json())["inputs"][0]
            x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
            return {"label": self.predictor(x).argmax(1).tolist()}

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = 8123

    row = np.random.default_rng(0).uniform(0, 16, size=(1, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": row.ravel().tolist()}]}).encode()
    predictor = load_predictor(folder, runtime, "classify")
    forward = {}
    for rows in (1, 32):
        x = np.repeat(row, rows, axis=0)
        for _ in range(20):
            predictor(x)
        times = []
        for _ in range(200 if args.model == "large" else 2000):
            t0 = time.perf_counter()
            predictor(x)
            times.append((time.perf_counter() - t0) * 1e3)
        forward[rows] = statistics.median(times)
    base = f"http://127.0.0.1:{port}"
    targets = [("bare Ray Serve", "bare", f"{base}/bare", ""),
               ("maas, no batching", "unbatched", f"{base}/unbatched/v2/models/digits/infer", ""),
               ("maas, batching", "batched", f"{base}/batched/v2/models/digits/infer", "")]
    keyed = None
    if args.keys:  # a store of its own: its named key makes its endpoints need one
        keyed = Registry(str(tmp / "keyed-store"))
        keyed.publish("digits", files, runtime=runtime, signature=classifier_signature(64, list(range(10))))
        _, secret = keyed.keys.create("bench", models=["digits"], rpm=10**9, requests_per_day=10**9)  # checked
        targets.append(("maas, batching, key", "keyed", f"{base}/keyed/v2/models/digits/infer", f"Bearer {secret}"))
    levels = [int(c) for c in args.concurrency.split(",")]
    cells: dict = {}  # (mode, c, endpoint) -> one figure dict per round
    nice = 0
    for mode in args.proxy.split(","):
        start_serve(DeploySpec(port=port, grpc_port=0, proxy=mode))
        for app, batch in (("batched", 32), ("unbatched", 1)):
            serve.run(build_app(reg.location, "digits/1", DeploySpec(max_batch_size=batch, batch_wait_timeout_s=0.0,
                                                                     num_replicas=args.replicas),
                                api_key_hashes=[]), name=app, route_prefix=f"/{app}")
        if keyed is not None:
            serve.run(build_app(keyed.location, "digits/1", DeploySpec(max_batch_size=32, batch_wait_timeout_s=0.0,
                                                                       num_replicas=args.replicas),
                                api_key_hashes=[]), name="keyed", route_prefix="/keyed")
        serve.run(Bare.options(num_replicas=args.replicas).bind(folder, runtime), name="bare", route_prefix="/bare")
        nice = server_niceness()
        for _, _, url, auth in targets:  # warm up
            load(url, body, 4, 1.0, nice, auth)
        for _ in range(args.rounds):  # every cell once a round: a slow minute of the machine hits all alike
            for c in levels:
                for name, app, url, auth in targets:
                    cpu0 = replica_cpu_s(app)
                    r = load(url, body, c, args.seconds, nice, auth)
                    assert r["errors"] == 0 or name != "maas, batching, key", r  # a refused key is no figure
                    r["cpu_us"] = (replica_cpu_s(app) - cpu0) / max(r["n"], 1) * 1e6
                    cells.setdefault((mode, c, name), []).append(r)
        stop_serve()
    ray.shutdown()

    label = "digits MLP 64-128-64-10, int8 ONNX" if args.model == "digits" else "large MLP 64-4096-4096-10, fp32 torch"
    print(f"\n{label}; model call alone: p50 {forward[1]:.3f} ms for 1 row, {forward[32]:.3f} ms for 32 rows")
    print(f"load: {tool} at niceness {nice} (the replicas'), {args.seconds:g} s a cell, {args.rounds} rounds "
          f"(medians; req/s range), {args.replicas} replica(s) per application\n")
    med = {key: {k: float(np.median([r[k] for r in runs])) for k in ("p50", "p99", "rps", "cpu_us")}
           for key, runs in cells.items()}
    print(f"{'ingress':<11} {'conc':>4}  {'endpoint':<18} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
          f"{'range':>11} {'of bare':>8} {'replica CPU us/req':>19} {'errors':>6}")
    for (mode, c, name), runs in cells.items():
        m, bare = med[mode, c, name], med[mode, c, "bare Ray Serve"]
        rps = [r["rps"] for r in runs]
        print(f"{mode:<11} {c:>4}  {name:<18} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['rps']:>7.0f} "
              f"{min(rps):>5.0f}-{max(rps):<5.0f} {m['rps'] / bare['rps']:>8.0%} {m['cpu_us']:>19.0f} "
              f"{sum(r['errors'] for r in runs):>6}")


if __name__ == "__main__":
    main()
