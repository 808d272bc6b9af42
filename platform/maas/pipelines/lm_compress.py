"""The decoder's compression stage (``compress:`` of ``kind: lm``): quantized variants of the published parent
(``maas.compress.llm_quant``), each measured against it under vLLM on held-out text
(``maas.compress.llm_measure``), gated (``check_llm_gate``), published (rejected ones too, never served) and
the fastest (or smallest) passing version promoted to ``deploy.alias``.

Building and measuring run in one Ray task placed like a serving engine (``deploy.llm``'s CPUs or GPUs): it
reads the parent from the registry on its node, writes each variant there, measures all of them in one child
process (vLLM's engines and shared memory go with it) and publishes through the registry, the store every node
shares.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from maas.pipelines.base import Laps, promote
from maas.spec import LMPipelineSpec

MEASURE_TIMEOUT_S = 420  # per model: engine start (compilation included) and the timed runs


def eval_inputs(val, compress, max_len: int) -> dict:
    """Held-out token ids from the validation blocks: ``eval`` (perplexity, cut to fit the context) and
    ``prompts`` (their first tokens), with how many greedy tokens fit after a prompt."""
    blocks = [list(map(int, r["tokens"])) for r in val.take(max(compress.eval_blocks, compress.prompts))]
    if not blocks:
        raise ValueError("compress: no held-out blocks to measure on; set data.val_fraction > 0")
    prompt_len = max(4, min(16, max_len // 4))
    return {"eval": [b[:max_len - 1] for b in blocks[:compress.eval_blocks]],
            "prompts": [b[:prompt_len] for b in blocks[:compress.prompts]],
            "max_tokens": min(compress.max_tokens, max_len - prompt_len)}


def compress_lm(spec: LMPipelineSpec, parent_ref: str, inputs: dict, run_dir: str, laps: Laps,
                alias_was: Optional[int], run_id: str) -> tuple[list, dict, dict]:
    """Build, measure, gate and publish ``spec.compress.variants`` of ``parent_ref``; promote per
    ``compress.select``. Returns (records, the promoted record, report paths)."""
    import ray

    from maas.compress.report import write_llm_report
    from maas.storage import put_bytes, put_folder_files

    c, llm = spec.compress, spec.deploy.llm
    name = parent_ref.split("/")[0]  # variants are versions of the parent's model, whatever the spec calls it
    laps.progress("compress", f"{', '.join(c.variants)} of {parent_ref}, measured under vLLM on "
                              f"{llm.placement()}")
    put_bytes(run_dir, "compress_eval.json", json.dumps(inputs).encode())  # the exact tokens: re-checkable
    task = ray.remote(max_calls=1, max_retries=0)(_build_measure_publish).options(num_cpus=llm.num_cpus,
                                                                                  num_gpus=llm.gpus())
    records = ray.get(task.remote(spec.store, parent_ref, name, c.model_dump(), llm.model_dump(),
                                  inputs, run_id))
    for r in records[1:]:
        m = r["metrics"]
        laps.lap("compress", f"{r['method']} -> {r['ref']} ({'pass' if r['passed'] else 'rejected'}): "
                             + (f"perplexity {m['perplexity']:.2f}, {_speeds(m)}" if "perplexity" in m
                                else r["gate"]))
    top = f"tokens_per_s_c{max(c.concurrency)}"
    promoted = promote(spec.store, spec.deploy.alias, records, c.select, top,
                       expected=alias_was, by=f"run:{run_id}")
    laps.lap("promote", f"{name}@{spec.deploy.alias} -> {promoted['ref']} ({promoted['method']})")
    with tempfile.TemporaryDirectory(prefix="maas-report-") as tmp:  # then into the run folder, local or not
        written = write_llm_report(records, Path(tmp), c.concurrency, picked=promoted["ref"],
                                   title=f"{name}: quantized variants vs their parent under vLLM")
        report = put_folder_files(run_dir, written)
    return records, promoted, report


def _speeds(m: dict) -> str:
    return ", ".join(f"{v:.0f} tokens/s @{k.rsplit('_c', 1)[1]}" for k, v in m.items()
                     if k.startswith("tokens_per_s_c"))


def _build_measure_publish(store: str, parent_ref: str, name: str, compress: dict, llm: dict, inputs: dict,
                           run_id: str) -> list:
    """On the engine's node: fetch the parent, write each variant, measure all under vLLM, gate, publish."""
    from maas.compress.encoder_variants import artifact_bytes
    from maas.compress.gate import check_llm_gate, greedy_agreement
    from maas.compress.llm_quant import CPU_UNSUPPORTED, quantize_hf_folder
    from maas.pipelines.base import publish_variant
    from maas.registry import Registry
    from maas.registry.hf_import import check_hf_folder
    from maas.serve.runtimes.vllm_config import engine_dtype
    from maas.spec import LLMEngineSpec, LLMGateSpec

    registry, engine = Registry(store), LLMEngineSpec(**llm)
    parent_folder, parent = registry.fetch(parent_ref)
    gpu = bool(engine.gpus())
    with tempfile.TemporaryDirectory(prefix="maas-llm-compress-") as tmp:
        built, models = {}, [{"key": "parent", "folder": str(parent_folder),
                              "dtype": engine_dtype(engine, parent.signature)}]
        for method in compress["variants"]:
            if method in CPU_UNSUPPORTED and not gpu:
                built[method] = {"error": CPU_UNSUPPORTED[method]}
                continue
            t = time.perf_counter()
            details = quantize_hf_folder(parent_folder, method, Path(tmp) / method,
                                         group_size=compress["group_size"])
            details["quantize_s"] = round(time.perf_counter() - t, 2)
            built[method] = details
            models.append({"key": method, "folder": str(Path(tmp) / method),
                           "dtype": engine_dtype(engine, {"serve_dtype": details["serve_dtype"]})})
        measured = measure_folders(models, inputs, compress["concurrency"], engine, tmp)
        base = measured["parent"]
        if "error" in base:
            raise RuntimeError(f"compress: vLLM could not run the parent {parent_ref}: {base['error']}")
        base_metrics = _metrics(base, parent_folder)
        records = [{"method": parent.lineage.get("method", "parent"), "runtime": "vllm", "ref": parent.ref,
                    "metrics": base_metrics, "gate": "parent", "passed": True, "details": {}}]
        gate = LLMGateSpec(**compress["gate"])
        for method in compress["variants"]:
            details = built[method]
            got = measured.get(method, details if "error" in details else {"error": "not measured"})
            if "error" not in got:
                got["greedy_agreement"] = greedy_agreement(base["greedy"], got["greedy"])
            passed, reason = check_llm_gate(base, got, gate)
            if "error" in got and method not in measured:  # never built (no kernel here): nothing to publish
                records.append({"method": method, "runtime": "vllm", "ref": "-", "metrics": {"size_bytes": 0},
                                "gate": "REJECTED: " + reason, "passed": False, "details": details})
                continue
            folder = Path(tmp) / method
            files, signature, _ = check_hf_folder(folder)
            signature.update(quantization=details["method"], serve_dtype=details["serve_dtype"])
            metrics = _metrics(got, folder) if "error" not in got else {"size_bytes": artifact_bytes(folder)}
            record = publish_variant(
                registry, name, files, runtime="vllm", task="generate", metrics=metrics, signature=signature,
                lineage={"kind": "lm", "run_id": run_id, "quantization": details,
                         "measured_against": {"ref": parent.ref, **base_metrics}},
                method=method, parent=parent.ref, passed=passed, reason=reason)
            record["details"] = details
            records.append(record)
    return records


def _metrics(m: dict, folder: Path) -> dict:
    from maas.compress.encoder_variants import artifact_bytes

    keep = {k: v for k, v in m.items() if k in ("perplexity", "nll", "eval_tokens", "greedy_agreement", "load_s")
            or k.startswith("tokens_per_s_c")}
    return {**keep, "size_bytes": artifact_bytes(folder)}


def measure_folders(models: list, inputs: dict, concurrency: list, engine, workdir: str) -> dict:
    """Run ``maas.compress.llm_measure`` over ``models`` in a child process of its own session; returns its
    result per key (a model it never reached: {"error"}). vLLM's shared memory left behind is released."""
    from maas.serve.runtimes.vllm_config import check_engine_kwargs, release_shared_memory, shm_entries

    gpu = bool(engine.gpus())
    # measured as served: deploy.llm's engine_kwargs too (checked against vLLM's names first)
    job = {"models": models, **inputs, "speed_tokens": inputs["max_tokens"], "concurrency": concurrency,
           "engine": {**check_engine_kwargs(engine.engine_kwargs), "enforce_eager": engine.enforce_eager,
                      "max_num_seqs": max(engine.max_num_seqs, max(concurrency)),
                      **({"gpu_memory_utilization": engine.gpu_memory_utilization} if gpu else {})}}
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": f"{engine.kv_cache_gib:g}", "TOKENIZERS_PARALLELISM": "false"}
    # CPU: every engine in one process (imports paid once); GPU: a process per engine, so each one finds the
    # device's memory whole (an engine shut down inside a process does not always give all of it back)
    groups = [models[i:i + 1] for i in range(len(models))] if gpu else [models]
    results = {}
    for n, group in enumerate(groups):
        job_path, result_path = Path(workdir) / f"measure-{n}.json", Path(workdir) / f"measured-{n}.json"
        job_path.write_text(json.dumps({**job, "models": group}))
        shm_before = shm_entries()
        proc = subprocess.Popen([sys.executable, "-m", "maas.compress.llm_measure", str(job_path),
                                 str(result_path)], env=env, start_new_session=True, stdout=sys.stderr,
                                stderr=sys.stderr)
        try:
            proc.wait(timeout=MEASURE_TIMEOUT_S * len(group))
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the measuring process and the engines it started
                proc.wait()
            release_shared_memory(shm_before)
        got = json.loads(result_path.read_text()) if result_path.is_file() else {}
        results.update({m["key"]: got.get(m["key"], {"error": f"not measured (the measuring process exited "
                                                               f"with {proc.returncode})"}) for m in group})
    return results
