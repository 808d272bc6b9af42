"""Task evaluation through maas's endpoint against lm-evaluation-harness's own in-process model, same run.

    python benchmarks/eval_llm.py                       # 200 multiple-choice + 40 generation lines, 2 rounds
    python benchmarks/eval_llm.py --mc 400 --rounds 3

A random Llama (``make_tiny_llama``: 2 layers) is imported into a fresh registry and served by maas on a real
vLLM engine (CPU, fp32, eager). The same lm-eval tasks (``maas.eval.tasks``: multiple choice by
log-likelihood, generation by exact match) then run (a) through the endpoint, lm-eval's ``local-completions``
model with ``--concurrency`` requests in flight, and (b) in-process with lm-eval's ``hf`` model on the same
folder (its default batch size 1, then ``--hf-batch``). Prints evaluated lines per second for each, the
scores (which must agree), and the ratio. Issue #35's benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_tasks(folder: Path, n_mc: int, n_gen: int) -> list:
    from maas.spec.evaluation import EvalTaskSpec

    (folder / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": f"w{i} w{i + 1} w{i + 2} w{i + 3}", "choices": [f"w{i + 4}", f"w{i + 9}", f"w{i + 30}",
                                                                       f"w{i + 77}"], "answer": i % 4})
        for i in range(1, n_mc + 1)))
    (folder / "gen.jsonl").write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}",
                                                            "answer": f"w{i + 3}"}) for i in range(1, n_gen + 1)))
    return [EvalTaskSpec(name="mc", path=str(folder / "mc.jsonl"), type="multiple_choice"),
            EvalTaskSpec(name="gen", path=str(folder / "gen.jsonl"), type="generate", max_tokens=8)]


def serve_tiny(folder: Path, registry_root: Path):
    """maas's endpoint for the folder: (url, teardown)."""
    from ray import serve

    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model
    from maas.runtime import free_port
    from maas.serve import build_app
    from maas.serve.deploy import proxy_address, start_serve, undeploy
    from maas.serve.readiness import wait_until_serving
    from maas.serve.served import normalize_routes
    from maas.spec import DeploySpec

    reg = Registry(str(registry_root))
    import_hf_model(reg, str(folder), "tiny", by="benchmark")
    reg.set_alias("tiny", "production", 1)
    spec = DeploySpec(llm={"num_cpus": 1, "max_model_len": 512, "max_sequences": 64})
    start_serve(DeploySpec(port=free_port(), grpc_port=0))
    routes = normalize_routes([{"model": "tiny", "alias": "production"}])
    serve.run_many([serve.RunTarget(build_app(reg.location, routes, spec), name="ev", route_prefix="/ev")],
                   wait_for_applications_running=False)
    url = f"http://{proxy_address('127.0.0.1', 8000)}/ev"
    wait_until_serving("ev", url, 1, spec.llm.start_timeout_s, lambda line: None)
    return url, lambda: undeploy("ev")


def timed(label: str, fn, lines: int) -> dict:
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    return {"system": label, "seconds": seconds, "lines_per_s": lines / seconds, "scores": out.scores()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mc", type=int, default=200)
    parser.add_argument("--gen", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--hf-batch", type=int, default=16)
    args = parser.parse_args()

    import ray

    from maas.eval.tasks import run_tasks
    from maas.models import make_tiny_llama
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    shm_before = shm_entries()
    tmp = Path(tempfile.mkdtemp(prefix="maas-bench-eval-"))
    folder = make_tiny_llama(tmp / "tiny", seed=0)
    tasks = write_tasks(tmp, args.mc, args.gen)
    lines = args.mc + args.gen
    url, teardown = serve_tiny(folder, tmp / "store")
    rows = []
    try:
        run_tasks(tasks[:1], endpoint=url, model="tiny", tokenizer=str(folder))  # warm-up: imports, first requests
        for r in range(args.rounds):
            rows.append({**timed("maas endpoint (local-completions)", lambda: run_tasks(
                tasks, endpoint=url, model="tiny", tokenizer=str(folder), concurrency=args.concurrency), lines),
                "round": r})
            rows.append({**timed("lm-eval in-process hf, batch 1", lambda: run_tasks(
                tasks, pretrained=str(folder)), lines), "round": r})
            rows.append({**timed(f"lm-eval in-process hf, batch {args.hf_batch}", lambda: run_tasks(
                tasks, pretrained=str(folder), batch_size=args.hf_batch), lines), "round": r})
    finally:
        teardown()
        ray.shutdown()
        release_shared_memory(shm_before)
    print(f"\n{args.mc} multiple-choice ({args.mc * 4} log-likelihoods) + {args.gen} generation lines, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs\n")
    print("| system | round | seconds | lines/s | mc acc | gen exact |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['system']} | {row['round']} | {row['seconds']:.1f} | {row['lines_per_s']:.1f} | "
              f"{row['scores']['mc']:.3f} | {row['scores']['gen']:.3f} |")
    best = {}
    for row in rows:
        best[row["system"]] = max(best.get(row["system"], 0), row["lines_per_s"])
    base = best["lm-eval in-process hf, batch 1"]
    print("\nbest of rounds, lines/s: " + ", ".join(f"{k} {v:.1f} ({v / base:.2f}x)" for k, v in best.items()))
    agree = len({(r["scores"]["mc"], r["scores"]["gen"]) for r in rows}) == 1
    print(f"scores agree across systems and rounds: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
