"""Measure Hugging Face causal-LM folders under vLLM, the engine that serves them: held-out perplexity (from
vLLM's prompt log-probabilities), greedy continuations of held-out prompts, and decode throughput with 1 and
with 32 requests in flight. One engine at a time, in a process of its own (``python -m
maas.compress.llm_measure job.json result.json``): vLLM starts engine processes and shared memory that only a
process exit reliably returns, and its multiprocessing wants a ``__main__`` guard.

job.json: {"models": [{"key", "folder", "dtype"}], "eval": [[token ids], ...], "prompts": [[ids], ...],
"max_tokens": N, "speed_tokens": N, "concurrency": [1, 32], "engine": {vLLM engine keywords}}; with
"score_only": true, only the log-probabilities of "eval" (no prompts, greedy text or speed).
result.json: {key: {"perplexity", "nll", "eval_tokens", "greedy": [[ids]], "tokens_per_s_c1", ...,
"load_s"} or {"error": message}}.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time


def measure(folder: str, dtype: str, job: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from maas.models.vllm_kernels import check_vllm_kernels

    check_vllm_kernels(folder)
    t0 = time.perf_counter()
    llm = LLM(model=folder, dtype=dtype, seed=0, **job.get("engine", {}))
    out = {"load_s": round(time.perf_counter() - t0, 2)}
    try:
        # perplexity: the log-probability vLLM gives each held-out token after the ones before it
        scored = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["eval"]],
                              SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0), use_tqdm=False)
        nll, n = 0.0, 0
        for ids, res in zip(job["eval"], scored):
            for pos, logprobs in enumerate(res.prompt_logprobs or []):
                if pos and logprobs:
                    nll -= logprobs[ids[pos]].logprob
                    n += 1
        out.update(nll=nll / max(n, 1), perplexity=math.exp(nll / max(n, 1)), eval_tokens=n)
        if job.get("score_only"):  # a champion read on held-out text: no generation or speed
            return out
        greedy = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]],
                              SamplingParams(max_tokens=job["max_tokens"], temperature=0, ignore_eos=True),
                              use_tqdm=False)
        out["greedy"] = [list(r.outputs[0].token_ids) for r in greedy]
        speed = SamplingParams(max_tokens=job["speed_tokens"], temperature=0, ignore_eos=True)
        prompts = job["prompts"]
        llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], speed, use_tqdm=False)  # warm
        for c in job.get("concurrency", [1, 32]):
            batch = [TokensPrompt(prompt_token_ids=prompts[i % len(prompts)]) for i in range(c)]
            rounds = 3 if c == 1 else 1
            t = time.perf_counter()
            made = sum(len(r.outputs[0].token_ids) for _ in range(rounds)
                       for r in llm.generate(batch, speed, use_tqdm=False))
            out[f"tokens_per_s_c{c}"] = made / (time.perf_counter() - t)
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    return out


def main(job_path: str, result_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    results = {}
    for m in job["models"]:
        try:
            results[m["key"]] = measure(m["folder"], m["dtype"], job)
        except Exception as exc:  # one model that vLLM cannot run must not hide the others' figures
            results[m["key"]] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        with open(result_path, "w") as f:  # written after each model: a killed run keeps what it measured
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
