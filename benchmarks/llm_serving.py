"""LLM serving throughput and latency: the maas endpoint against bare Ray Serve LLM (its default mode and its
direct-streaming mode) and vLLM's own OpenAI server, on the same model in the same run.

    python benchmarks/llm_serving.py                       # all four, concurrency 1, 8 and 32
    python benchmarks/llm_serving.py --systems maas,vllm --concurrency 1,32 --max-tokens 64 --rounds 3

The model is a random Llama built here (4 layers, width 256: nothing is downloaded), imported into a
temporary registry. Each system runs in a child process with its own Ray (the direct-streaming mode is a
cluster-wide switch), is warmed up, then asked ``/v1/completions`` with ``stream: true`` and
``ignore_eos`` (every answer is ``--max-tokens`` long) by ``c`` concurrent clients, after one warm-up round
at that concurrency (vLLM's CPU kernels pay once for each new batch shape). Reported per system and
concurrency: output tokens/s over the wall time, time to first token (TTFT) and time per output token after
the first (TPOT), p50 and p99, and the CPU time each 1,000 output tokens cost: in vLLM's engine processes
(``VLLM::EngineCore`` and ``VLLM::Worker``: the same work for every system) and in everything else the system
runs (its HTTP front: HAProxy or a proxy, ingress and engine replicas, vLLM's API server; Ray's own
daemons included). On a small shared machine tokens/s at high concurrency moves with the scheduler's luck
(up to 2x between runs); the front's CPU per token does not, and is what a system adds
(``MAAS_BENCH_CPU_DETAIL=1`` prints it by process). ``--rounds N`` starts
every system N times, in turn, and reports the median of each figure (tokens/s: also its range). Every
child is stopped (and what its engines left in /dev/shm removed) before the next starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("maas", "maas-proxy", "ray-default", "ray-direct", "vllm")  # maas-proxy: behind Serve's default proxy
DEFAULT_SYSTEMS = "maas,ray-default,ray-direct,vllm"
ENGINE = {"max_model_len": 512, "max_num_seqs": 64, "dtype": "float32", "enforce_eager": True}
KV_GIB = "1"


# ----------------------------------------------------------------------------------------- the servers

def _engine_config(folder: str):
    from ray.serve.llm import LLMConfig

    return LLMConfig(model_loading_config={"model_id": "tiny", "model_source": folder},
                     accelerator_config={"kind": "cpu"},
                     deployment_config={"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
                     engine_kwargs=ENGINE, runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": KV_GIB}})


def serve_child(system: str, folder: str, store: str, port: int) -> None:
    """Start one system, print READY <base url>, serve until SIGTERM/SIGINT, then stop everything."""
    import ray
    from ray import serve

    from maas.serve.deploy import stop_serve

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        if system.startswith("maas"):  # maas starts Serve itself, in its high-throughput mode unless told
            from maas.serve import deploy
            from maas.spec import DeploySpec

            mode = "default" if system == "maas-proxy" else "throughput"
            deploy(store, "tiny@production", DeploySpec(port=port, grpc_port=0, proxy=mode, llm={
                "num_cpus": 1, "max_model_len": ENGINE["max_model_len"], "max_num_seqs": ENGINE["max_num_seqs"],
                "kv_cache_gib": float(KV_GIB), "max_tokens": 1024,
                **({"stream_interval_ms": float(os.environ["MAAS_BENCH_STREAM_INTERVAL_MS"])}
                   if os.environ.get("MAAS_BENCH_STREAM_INTERVAL_MS") else {})}))
        else:
            from ray.serve.llm import build_openai_app

            serve.start(http_options={"host": "127.0.0.1", "port": port})
            args = {"llm_configs": [_engine_config(folder)]}
            if system == "ray-default":  # direct streaming has no ingress of its own (the server is the ingress)
                args["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
            app = build_openai_app(args)
            serve.run(app, name="bare", route_prefix="/", blocking=False)
        print(f"READY http://127.0.0.1:{port}", flush=True)
        while not stop:
            time.sleep(0.2)
    finally:
        stop_serve()
        ray.shutdown()


def start(system: str, folder: str, store: str, port: int, log) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_GIB, "HF_HUB_OFFLINE": "1"}
    if system == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
               "--served-model-name", "tiny", "--port", str(port), "--host", "127.0.0.1",
               "--max-model-len", str(ENGINE["max_model_len"]), "--max-num-seqs", str(ENGINE["max_num_seqs"]),
               "--dtype", ENGINE["dtype"], "--enforce-eager", "--no-enable-log-requests"]
        url = f"http://127.0.0.1:{port}"
    else:
        if system == "ray-direct":
            env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")
        cmd = [sys.executable, __file__, "--serve-child", system, "--folder", folder, "--store", store,
               "--port", str(port)]
        url = None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    deadline = time.time() + 600
    if url is None:
        for line in proc.stdout:
            if line.startswith("READY "):
                url = line.split()[1]
                break
        if url is None:
            raise RuntimeError(f"{system} did not start; see {log.name}")
    import requests

    while time.time() < deadline:  # the route answers once the engine is loaded
        try:
            if requests.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{system} exited with {proc.returncode}; see {log.name}")
        time.sleep(1)
    raise RuntimeError(f"{system} did not answer within 600 s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the child we started (its whole process group: engines included)."""
    try:
        os.killpg(proc.pid, signal.SIGINT if proc.args[1] == __file__ else signal.SIGTERM)
        proc.wait(120)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


# ----------------------------------------------------------------------------------------- the load

async def one(client, url: str, max_tokens: int) -> tuple[float, float, int]:
    body = {"model": "tiny", "prompt": "w1 w2 w3 w4 w5 w6 w7 w8", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.8, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():  # the client shares the cores: parse only the usage chunk
            if first is None and line.startswith("data: {") and '"choices":[{' in line.replace(" ", ""):
                first = time.perf_counter()
            elif '"usage"' in line and line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = int(usage["completion_tokens"]) if usage else tokens
    ended = time.perf_counter()
    first = first or ended
    return first - started, (ended - first) / max(tokens - 1, 1), tokens


async def load(url: str, concurrency: int, per_client: int, max_tokens: int, sid: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*[one(client, url, 16) for _ in range(max(4, concurrency))])  # warm-up at this level
        results = []
        cpu_before = cpu_seconds(sid)

        async def worker():
            for _ in range(per_client):
                results.append(await one(client, url, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(sid)
    tokens = sum(r[2] for r in results)
    ms_per_k = {role: (cpu_after[role] - cpu_before[role]) * 1e6 / max(tokens, 1) for role in ("engine", "front")}
    if os.environ.get("MAAS_BENCH_CPU_DETAIL"):  # where the front's CPU goes, by process
        before = cpu_before["by_process"]
        detail = {k: (v - before.get(k, 0.0)) * 1e6 / max(tokens, 1) for k, v in cpu_after["by_process"].items()}
        print("  CPU ms/1k tokens by process: " + ", ".join(f"{k[:70]} {v:.0f}" for k, v in sorted(
            detail.items(), key=lambda kv: -kv[1]) if v >= 20), file=sys.stderr, flush=True)
    ttft = np.array([r[0] for r in results]) * 1e3
    tpot = np.array([r[1] for r in results]) * 1e3
    return {"tokens_per_s": tokens / wall, "requests": len(results), "engine_cpu_ms_per_1k": ms_per_k["engine"],
            "front_cpu_ms_per_1k": ms_per_k["front"],
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p99": float(np.percentile(ttft, 99)),
            "tpot_p50": float(np.percentile(tpot, 50)), "tpot_p99": float(np.percentile(tpot, 99))}


ENGINE_TITLES = ("VLLM::EngineCore", "VLLM::Worker")


def cpu_seconds(sid: int) -> dict:
    """User + system CPU seconds so far of the processes in session ``sid`` (one system's child and all it
    started: Ray's daemons, replicas, HAProxy, vLLM's processes), split into vLLM's engine and the rest."""
    import psutil

    out = {"engine": 0.0, "front": 0.0, "by_process": {}}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(proc.pid) != sid:
                continue
            t = proc.cpu_times()
            cmd = " ".join(proc.info["cmdline"] or ())
            role = "engine" if any(x in cmd for x in ENGINE_TITLES) else "front"
            out[role] += t.user + t.system
            name = (cmd.split(" ")[0].rsplit("/", 1)[-1] if not cmd.startswith("ray::") else cmd.split(".")[0]).strip()
            out["by_process"][name] = out["by_process"].get(name, 0.0) + t.user + t.system
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def _median_figures(runs: list[dict]) -> dict:
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    out["tokens_per_s_min"] = min(r["tokens_per_s"] for r in runs)
    out["tokens_per_s_max"] = max(r["tokens_per_s"] for r in runs)
    out["rounds"] = len(runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"any of {', '.join(SYSTEMS)}")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=64,
                    help="requests per concurrency level (at least 8 per client: 256 at c=32)")
    ap.add_argument("--rounds", type=int, default=1, help="start every system this many times; report medians")
    ap.add_argument("--stream-interval-ms", type=float, default=None,
                    help="maas: deploy.llm.stream_interval_ms (default: the spec's default)")
    ap.add_argument("--logs", help="keep each system's log in this folder (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--serve-child", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args.serve_child, args.folder, args.store, args.port)
        return

    from maas.models import make_tiny_llama
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model
    from maas.runtime import free_port
    from maas.serve.llm_engine import release_shared_memory, shm_entries

    levels = [int(c) for c in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    runs, failed = {}, []  # (system, c) -> figures of each round
    with tempfile.TemporaryDirectory(prefix="maas-llm-bench-") as tmp:
        folder = str(make_tiny_llama(Path(tmp) / "model", layers=4, width=256, max_positions=512))
        reg = Registry(str(Path(tmp) / "store"))
        mv, _ = import_hf_model(reg, folder, "tiny", by="benchmark")
        reg.set_alias("tiny", "production", mv.version)
        logs = Path(args.logs or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        if args.stream_interval_ms is not None:
            os.environ["MAAS_BENCH_STREAM_INTERVAL_MS"] = str(args.stream_interval_ms)
        for round_ in range(1, args.rounds + 1):
            for system in systems:
                shm_before = shm_entries()
                with open(logs / f"{system}-{round_}.log", "w") as log:
                    t0 = time.time()
                    try:
                        proc, url = start(system, folder, reg.location, free_port(), log)
                    except RuntimeError as exc:
                        failed.append(f"{system} (round {round_}) did not start: {exc}")
                        print(failed[-1], file=sys.stderr, flush=True)
                        release_shared_memory(shm_before)
                        continue
                    print(f"{system}: up in {time.time() - t0:.0f} s at {url} (round {round_})", file=sys.stderr,
                          flush=True)
                    try:
                        for c in levels:
                            per_client = max(8, args.requests // c)
                            f = asyncio.run(load(url, c, per_client, args.max_tokens, os.getsid(proc.pid)))
                            runs.setdefault((system, c), []).append(f)
                            print(f"  {system} c={c}: {f['tokens_per_s']:.0f} tokens/s, TTFT p50 "
                                  f"{f['ttft_p50']:.1f} ms, front CPU {f['front_cpu_ms_per_1k']:.0f} ms/1k tokens",
                                  file=sys.stderr, flush=True)
                    finally:
                        stop(proc)
                        release_shared_memory(shm_before)
    from maas.report import table

    figures = {key: _median_figures(r) for key, r in runs.items()}
    rows = []
    for (system, c), f in figures.items():
        spread = f" ({f['tokens_per_s_min']:,.0f}-{f['tokens_per_s_max']:,.0f})" if f["rounds"] > 1 else ""
        rows.append([system, str(c), f"{f['requests']:.0f}", f"{f['tokens_per_s']:,.0f}{spread}",
                     f"{f['ttft_p50']:.1f}", f"{f['ttft_p99']:.1f}", f"{f['tpot_p50']:.2f}", f"{f['tpot_p99']:.2f}",
                     f"{f['engine_cpu_ms_per_1k']:,.0f}", f"{f['front_cpu_ms_per_1k']:,.0f}"])
    print(f"\nLLM serving, random Llama (4 layers, width 256), {args.max_tokens}-token streamed completions, "
          f"{os.cpu_count()} CPU cores, {args.rounds} round(s): medians")
    print(table(["system", "concurrency", "requests", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
                 "TPOT p99 ms", "engine CPU ms/1k tok", "front CPU ms/1k tok"], rows))
    for line in failed:
        print(line)
    top = max(levels)
    if ("maas", top) in figures:
        m = figures[("maas", top)]["tokens_per_s"]
        lines = []
        best_ray = max((figures[(s, top)]["tokens_per_s"] for s in ("ray-default", "ray-direct")
                        if (s, top) in figures), default=None)
        if best_ray:
            lines.append(f"maas / best bare Ray Serve LLM at c={top}: {m / best_ray:.0%}")
        if ("vllm", top) in figures:
            lines.append(f"maas / vLLM's own server at c={top}: {m / figures[('vllm', top)]['tokens_per_s']:.0%}")
        print("\n".join(lines))
    for system in systems:  # what each system's own load scaling is on this machine (the 8x goal's yardstick)
        if (system, 1) in figures and (system, top) in figures and top > 1:
            ratio = figures[(system, top)]["tokens_per_s"] / figures[(system, 1)]["tokens_per_s"]
            print(f"{system}: c={top} / c=1 {ratio:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{s}@{c}": {"median": figures[(s, c)], "rounds": r}
                                               for (s, c), r in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
