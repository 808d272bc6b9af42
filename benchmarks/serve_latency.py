"""Serving overhead: maas's OIP endpoint vs a bare Ray Serve deployment vs the model call alone, same run.

The model is the digits MLP (64-128-64-10) as int8 ONNX, as `maas run` serves it, or (`--model large`) a
64-4096-4096-10 fp32 torch MLP whose one-row forward is memory-bound, where batching pays. Three Serve applications
on one local Ray: maas with dynamic batching, maas without (max_batch_size=1), and a bare deployment that
parses the same JSON and calls the same predictor. Load comes from a separate process on this machine
(asyncio clients on keep-alive connections), one single-row request at a time per client, for `--seconds`
per cell.

    python benchmarks/serve_latency.py [--seconds 5] [--concurrency 1,8,32] [--model digits|large]
                                       [--proxy default,throughput]

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


def _load_process(url: str, body: bytes, concurrency: int, seconds: float, out) -> None:
    """Closed-loop load from one process: `concurrency` asyncio clients on keep-alive connections."""
    import asyncio

    import aiohttp

    async def run():
        latencies, errors = [], 0
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop = time.perf_counter() + seconds

            async def client():
                nonlocal errors
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    async with session.post(url, data=body) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - started

    out.put(asyncio.run(run()))


def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    """Run the load in a separate process (so the client's Python does not share this one's GIL)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(url, body, concurrency, seconds, queue))
    proc.start()
    latencies, errors, elapsed = queue.get(timeout=seconds + 120)
    proc.join()
    ms = np.array(latencies) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "rps": len(latencies) / elapsed, "n": len(latencies), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--model", choices=["digits", "large"], default="digits",
                    help="digits: the int8 ONNX MLP that `maas run` serves; large: a 64-4096-4096-10 fp32 torch MLP")
    ap.add_argument("--proxy", default="default,throughput",
                    help="Serve ingress modes to measure, each on a fresh Serve (deploy.proxy values)")
    args = ap.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    from maas.models import load_predictor
    from maas.serve.deploy import stop_serve
    from maas.registry import Registry
    from maas.serve import build_app
    from maas.serve.deploy import start_serve
    from maas.models import classifier_signature
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
    targets = [("bare Ray Serve", f"{base}/bare"), ("maas, no batching", f"{base}/unbatched/v2/models/digits/infer"),
               ("maas, batching", f"{base}/batched/v2/models/digits/infer")]
    rows = []
    for mode in args.proxy.split(","):
        start_serve(DeploySpec(port=port, grpc_port=0, proxy=mode))
        serve.run(build_app(reg.location, "digits/1", DeploySpec(max_batch_size=32, batch_wait_timeout_s=0.0),
                            api_key_hashes=[]), name="batched", route_prefix="/batched")
        serve.run(build_app(reg.location, "digits/1", DeploySpec(max_batch_size=1, batch_wait_timeout_s=0),
                            api_key_hashes=[]), name="unbatched", route_prefix="/unbatched")
        serve.run(Bare.bind(folder, runtime), name="bare", route_prefix="/bare")
        for _, url in targets:  # warm up
            load(url, body, 4, 1.0)
        for c in [int(c) for c in args.concurrency.split(",")]:
            for name, url in targets:
                rows.append((mode, c, name, load(url, body, c, args.seconds)))
        stop_serve()
    ray.shutdown()

    label = "digits MLP 64-128-64-10, int8 ONNX" if args.model == "digits" else "large MLP 64-4096-4096-10, fp32 torch"
    print(f"\n{label}; model call alone: p50 {forward[1]:.3f} ms for 1 row, {forward[32]:.3f} ms for 32 rows\n")
    bare = {(mode, c): r["rps"] for mode, c, name, r in rows if name == "bare Ray Serve"}
    print(f"{'ingress':<11} {'conc':>4}  {'endpoint':<18} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'of bare':>8} "
          f"{'errors':>6}")
    for mode, c, name, r in rows:
        share = r["rps"] / bare[mode, c] if bare.get((mode, c)) else float("nan")
        print(f"{mode:<11} {c:>4}  {name:<18} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>8.0f} {share:>8.0%} "
              f"{r['errors']:>6}")


if __name__ == "__main__":
    main()
