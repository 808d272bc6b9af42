"""Batch generation with a language model: ``maas batch`` (Ray Data LLM's vLLM engine on the registry's
verified folder, answers and rejects written as Parquet) against vLLM's own offline ``LLM.generate`` in one
process, and against the online endpoint (``maas`` serving the same version, asked ``/v1/completions`` by 32
concurrent clients), same prompts, same engine settings (maas's defaults: fp32 on CPUs, eager, 64 sequences,
1 GiB of KV cache, the model's own context), greedy, same run, same machine.

The model is a random Llama built with ``transformers`` (no download); its size is set by ``--layers`` and
``--width``. Each system is reported whole (from its start: imports, engine, data) and, where it can be cut out,
for its generation alone: vLLM's ``generate`` call; the online endpoint from the first request to the last
answer, the engine already up. maas batch's rate of generation alone: two runs of different ``--rows``, the
extra tokens over the extra seconds.

    python benchmarks/batch_llm.py [--rows 512] [--max-tokens 64] [--layers 4] [--width 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OFFLINE = """
import json, sys, time
t0 = time.perf_counter()
from vllm import LLM, SamplingParams
args = json.loads(sys.argv[1])
prompts = [json.loads(line)["prompt"] for line in open(args["input"])]
llm = LLM(model=args["folder"], **args["engine"])
t1 = time.perf_counter()
outs = llm.generate(prompts, SamplingParams(max_tokens=args["max_tokens"], temperature=0), use_tqdm=False)
t2 = time.perf_counter()
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"tokens": tokens, "whole": t2 - t0, "gen": t2 - t1}), flush=True)
"""


def prompts(path: Path, rows: int, words: int) -> None:
    import random

    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "prompt": " ".join(f"w{rng.randrange(words)}" for _ in range(16))}) + "\n")


def offline(folder: str, path: Path, max_tokens: int, engine: dict) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    arg = json.dumps({"folder": folder, "input": str(path), "max_tokens": max_tokens, "engine": engine})
    out = subprocess.run([sys.executable, "-c", OFFLINE, arg], capture_output=True, text=True, env=env, check=True)
    return json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))


def maas_batch(store: str, path: Path, out: Path, max_tokens: int) -> dict:
    """Whole only: Ray Data LLM keeps many blocks in the engine at once and hands the first one on late, so no
    block marks the engine's readiness (the first written block came after 85% of the time here)."""
    import pandas as pd

    from maas.batch import run_batch

    result = run_batch(store, "tiny/1", str(path), str(out), max_tokens=max_tokens)
    answers = pd.read_parquet(out / "answers")
    return {"tokens": int(answers["completion_tokens"].sum()), "whole": result.seconds, "gen": None}


def online(store: str, path: Path, max_tokens: int, concurrency: int) -> dict:
    import asyncio

    import httpx
    from ray import serve

    from maas.runtime import free_port
    from maas.serve import build_app
    from maas.serve.deploy import proxy_address, start_serve, stop_serve, undeploy
    from maas.serve.readiness import wait_until_serving
    from maas.serve.served import normalize_routes
    from maas.spec import DeploySpec

    spec = DeploySpec()
    t0 = time.perf_counter()
    start_serve(DeploySpec(port=free_port(), grpc_port=0))
    serve.run_many([serve.RunTarget(build_app(store, normalize_routes([{"model": "tiny", "alias": "production"}]),
                                              spec), name="bench", route_prefix="/bench")],
                   wait_for_applications_running=False)
    url = f"http://{proxy_address('127.0.0.1', 8000)}/bench"
    wait_until_serving("bench", url, 1, spec.llm.start_timeout_s, lambda line: None)
    texts = [json.loads(line)["prompt"] for line in open(path)]

    async def run() -> int:
        queue, tokens = list(texts), 0
        async with httpx.AsyncClient(timeout=600) as client:
            async def worker():
                nonlocal tokens
                while queue:
                    body = {"model": "tiny", "prompt": queue.pop(), "max_tokens": max_tokens, "temperature": 0}
                    r = await client.post(f"{url}/v1/completions", json=body)
                    tokens += r.json()["usage"]["completion_tokens"]
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return tokens

    t1 = time.perf_counter()
    tokens = asyncio.run(run())
    t2 = time.perf_counter()
    undeploy("bench")
    stop_serve()  # and the HAProxy folder it leaves
    return {"tokens": tokens, "whole": t2 - t0, "gen": t2 - t1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    from maas.models import make_tiny_llama
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model
    from maas.runtime import ensure_ray
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries
    from maas.spec import DeploySpec

    shm_before = shm_entries()
    work = Path(tempfile.mkdtemp(prefix="batch-llm-"))
    folder = str(make_tiny_llama(work / "model", layers=args.layers, width=args.width))
    store = str(work / "store")
    import_hf_model(Registry(store), folder, "tiny", by="bench")
    Registry(store).set_alias("tiny", "production", 1)
    path = work / "prompts.jsonl"
    prompts(path, args.rows, 250)
    llm = DeploySpec().llm
    engine = {"dtype": "float32", "enforce_eager": llm.enforce_eager, "max_num_seqs": llm.max_num_seqs}
    rows = {"vLLM offline LLM.generate": offline(folder, path, args.max_tokens, engine)}
    ensure_ray()
    rows["maas batch"] = maas_batch(store, path, work / "out", args.max_tokens)
    rows[f"online endpoint, c={args.concurrency}"] = online(store, path, args.max_tokens, args.concurrency)
    base = rows["vLLM offline LLM.generate"]
    print(f"\n{args.rows} prompts x {args.max_tokens} tokens, Llama {args.layers} layers x {args.width}, greedy\n")
    print("| system | output tokens | whole s | tokens/s whole | vs vLLM offline whole | generation s | "
          "tokens/s generating |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        whole = r["tokens"] / r["whole"]
        gen = f"{r['gen']:.1f} | {r['tokens'] / r['gen']:,.0f}" if r["gen"] else "- | -"
        print(f"| {name} | {r['tokens']:,} | {r['whole']:.1f} | {whole:,.0f} | "
              f"{whole / (base['tokens'] / base['whole']):.0%} | {gen} |")
    shutil.rmtree(work, ignore_errors=True)
    release_shared_memory(shm_before)  # what the engines left
    print("\nThe rate of generation alone for maas batch: run two sizes and divide the extra tokens by the extra "
          "seconds.")

if __name__ == "__main__":
    main()
