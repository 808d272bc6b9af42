"""Serving overhead: maas's OIP endpoint vs a bare Ray Serve deployment vs the model call alone, same run.

The model is the digits MLP (64-128-64-10) as int8 ONNX, as `maas run` serves it. Three Serve applications
on one local Ray: maas with dynamic batching, maas without (max_batch_size=1), and a bare deployment that
parses the same JSON and calls the same predictor. Load comes from threads on this machine (keep-alive
sessions), one single-row request at a time per thread, for `--seconds` per cell.

    python benchmarks/serve_latency.py [--seconds 5] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def build_model(folder: Path) -> Path:
    import torch

    from maas.compress import compress_model
    from maas.models import build_model as build
    from maas.models.artifacts import export_onnx

    torch.manual_seed(0)
    model = build({"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [128, 64], "dropout": 0.0})
    (variant,) = compress_model(["int8_dynamic"], export_onnx(model, 64, folder / "fp32.onnx"), folder)
    return variant.files["model.onnx"]


def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import requests

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker():
        session = requests.Session()
        mine = []
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = session.post(url, data=body, timeout=30)
            mine.append(time.perf_counter() - t0)
            if r.status_code != 200:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "rps": len(latencies) / elapsed, "n": len(latencies), "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()

    import ray
    from ray import serve
    from starlette.requests import Request

    from maas.models.predictor import OnnxPredictor
    from maas.registry import Registry
    from maas.serve import build_app
    from maas.serve.oip import classifier_signature
    from maas.spec import DeploySpec

    tmp = Path(tempfile.mkdtemp(prefix="maas-serve-bench-"))
    onnx_path = build_model(tmp)
    reg = Registry(str(tmp / "store"))
    reg.publish("digits", {"model.onnx": onnx_path}, runtime="onnxruntime",
                signature=classifier_signature(64, list(range(10))))

    @serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
    class Bare:
        def __init__(self, path: str):
            self.predictor = OnnxPredictor(path)

        async def __call__(self, request: Request):
            t = (await request.json())["inputs"][0]
            x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
            return {"label": self.predictor(x).argmax(1).tolist()}

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = 8123
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(reg.location, "digits/1", DeploySpec(max_batch_size=32, batch_wait_timeout_s=0.002),
                        api_key_hashes=[]), name="batched", route_prefix="/batched")
    serve.run(build_app(reg.location, "digits/1", DeploySpec(max_batch_size=1, batch_wait_timeout_s=0),
                        api_key_hashes=[]), name="unbatched", route_prefix="/unbatched")
    serve.run(Bare.bind(str(onnx_path)), name="bare", route_prefix="/bare")

    row = np.random.default_rng(0).uniform(0, 16, size=(1, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": row.ravel().tolist()}]}).encode()
    predictor = OnnxPredictor(onnx_path)
    for _ in range(100):
        predictor(row)
    forward = []
    for _ in range(2000):
        t0 = time.perf_counter()
        predictor(row)
        forward.append((time.perf_counter() - t0) * 1e3)
    base = f"http://127.0.0.1:{port}"
    targets = [("bare Ray Serve", f"{base}/bare"), ("maas, no batching", f"{base}/unbatched/v2/models/digits/infer"),
               ("maas, batching", f"{base}/batched/v2/models/digits/infer")]
    for _, url in targets:  # warm up
        load(url, body, 4, 1.0)
    rows = []
    for c in [int(c) for c in args.concurrency.split(",")]:
        for name, url in targets:
            rows.append((c, name, load(url, body, c, args.seconds)))
    serve.shutdown()
    ray.shutdown()

    print(f"\nmodel call alone (int8 ONNX, 1 row): p50 {statistics.median(forward):.3f} ms\n")
    print(f"{'conc':>4}  {'endpoint':<18} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}")
    for c, name, r in rows:
        print(f"{c:>4}  {name:<18} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['rps']:>8.0f} {r['errors']:>6}")


if __name__ == "__main__":
    main()
