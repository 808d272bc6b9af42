"""Quantized variants of a 100M+ decoder under vLLM on this machine, side by side with their parent in one run.

    python benchmarks/compress_llm.py                       # Llama 125m (124M parameters), random weights
    python benchmarks/compress_llm.py --size base --compiled

Builds a randomly initialised ``transformers`` Llama of the named size with a BPE tokenizer learnt from
installed packages' docs (nothing is downloaded; training 124M parameters is a GPU job), writes the variants
``maas.compress.llm_quant`` makes (bf16, w8a8, w4a16; w8a16 where vLLM has a kernel for it), and measures
every folder with ``maas.compress.llm_measure`` exactly as the compress stage does, each in a fresh vLLM
engine: held-out perplexity, greedy agreement with the parent, weight bytes, tokens/s with 1 and with 32
requests in flight. With random weights the perplexity and agreement columns only show that the variants
compute the same function (the gate's real figures come from a trained model: examples/lm.yaml's compress
section); speed and size are what this benchmark is for. Goal (issue #16): a passing int8 variant >= 1.5x the
parent's tokens/s at 32 in flight, >= 1.9x smaller, perplexity within 5%.

Writes benchmarks/results/compress_llm/compression_report.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    import torch

    from maas.compress.encoder_variants import artifact_bytes
    from maas.compress.gate import check_llm_gate, greedy_agreement
    from maas.compress.llm_quant import CPU_UNSUPPORTED, quantize_hf_folder
    from maas.compress.report import llm_markdown_table, write_llm_report
    from maas.data.corpus import english_corpus
    from maas.models import build_model
    from maas.models.llama import llama_config, save_hf_folder, train_tokenizer
    from maas.pipelines.lm_compress import measure_folders
    from maas.serve.runtimes.vllm_config import engine_dtype
    from maas.spec import LLMEngineSpec, LLMGateSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="125m", help="maas.models.llama size (default 125m: 124M parameters)")
    ap.add_argument("--methods", default="bf16,w8a8,w4a16,w8a16")
    ap.add_argument("--compiled", action="store_true", help="vLLM's compiled graphs (deploy.llm.enforce_eager="
                                                            "false); default: eager, maas's CPU default")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="deploy.llm.dtype for every engine (auto: float32 on CPU unless a variant needs bf16)")
    ap.add_argument("--block", type=int, default=256, help="context: held-out blocks and prompt + generation")
    ap.add_argument("--out", default=None, help="report folder (default benchmarks/results/compress_llm[-DTYPE])")
    args = ap.parse_args()
    engine = LLMEngineSpec(enforce_eager=not args.compiled, kv_cache_gib=2, dtype=args.dtype)
    # random weights give near-uniform logits whose argmax flips under any perturbation: greedy agreement is
    # reported, not gated, here (the pipeline's default gate asks 0.5 of a trained model)
    gate = LLMGateSpec(min_greedy_agreement=0.0)
    gpu = torch.cuda.is_available()
    methods = args.methods.split(",")

    started = time.perf_counter()
    sentences = english_corpus(limit=20000)
    config = llama_config(args.size, block_size=args.block)
    tok = train_tokenizer(sentences, config["vocab_size"])
    config["vocab_size"] = len(tok)
    torch.manual_seed(0)
    model = build_model(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids = tok("\n".join(sentences[-3000:]), add_special_tokens=False)["input_ids"]
    blocks = [ids[i:i + args.block - 1] for i in range(0, len(ids) - args.block, args.block)][:32]
    inputs = {"eval": blocks, "prompts": [b[:16] for b in blocks[:16]], "max_tokens": 64}
    print(f"Llama {args.size}: {n_params / 1e6:.1f}M parameters (random weights), vocabulary {len(tok)}, "
          f"{os.cpu_count()} CPU(s), {'GPU' if gpu else 'CPU'} vLLM, "
          f"{'compiled' if args.compiled else 'eager'}, engine dtype {args.dtype}", flush=True)
    with tempfile.TemporaryDirectory(prefix="maas-bench-llm-") as tmp:
        parent = save_hf_folder(model, tok, Path(tmp) / "parent")
        del model
        models, built = [{"key": "fp32", "folder": str(parent), "dtype": engine_dtype(engine, {})}], {}
        for method in methods:
            if method in CPU_UNSUPPORTED and not gpu:
                built[method] = {"error": CPU_UNSUPPORTED[method]}
                continue
            t = time.perf_counter()
            built[method] = quantize_hf_folder(parent, method, Path(tmp) / method)
            print(f"  {method}: written in {time.perf_counter() - t:.1f} s", flush=True)
            models.append({"key": method, "folder": str(Path(tmp) / method),
                           "dtype": engine_dtype(engine, {"serve_dtype": built[method]["serve_dtype"]})})
        measured = measure_folders(models, inputs, [1, 32], engine, tmp)
        base = measured["fp32"]
        if "error" in base:
            print(f"the parent did not run: {base['error']}")
            return 1
        sizes = {m["key"]: artifact_bytes(Path(m["folder"])) for m in models}
        dtypes = {m["key"]: m["dtype"] for m in models}
        records = [{"method": "fp32", "ref": f"vLLM {dtypes['fp32']}", "passed": True, "gate": "parent",
                    "metrics": {**_figures(base), "size_bytes": sizes["fp32"]}}]
        for method in methods:
            got = measured.get(method, built[method])
            if "error" not in got:
                got["greedy_agreement"] = greedy_agreement(base["greedy"], got["greedy"])
            passed, reason = check_llm_gate(base, got, gate)
            metrics = {**_figures(got), "size_bytes": sizes.get(method, 0)} if "error" not in got else {
                "size_bytes": 0}
            records.append({"method": method, "ref": f"vLLM {dtypes[method]}" if method in dtypes else "-",
                            "passed": passed, "metrics": metrics,
                            "gate": ("pass: " if passed else "REJECTED: ") + reason})
    print(f"\nrun {time.perf_counter() - started:.0f} s\n")
    print(llm_markdown_table(records, [1, 32]))
    for r in records[1:]:
        print(f"- {r['method']}: {r['gate']}")
    out = args.out or ROOT / "benchmarks" / "results" / ("compress_llm" + ("" if args.dtype == "auto" else
                                                                         f"-{args.dtype}"))
    paths = write_llm_report(records, Path(out), [1, 32], picked=None,
                             title=f"Llama {args.size} ({n_params / 1e6:.0f}M, random weights): variants under vLLM "
                                   f"({'GPU' if gpu else f'{os.cpu_count()} CPUs'})")
    p = records[0]["metrics"]
    for r in records[1:]:
        if r["method"] != "w8a8" or "tokens_per_s_c32" not in r["metrics"]:
            continue
        m = r["metrics"]
        speed, smaller = m["tokens_per_s_c32"] / p["tokens_per_s_c32"], p["size_bytes"] / m["size_bytes"]
        rise = m["perplexity"] / p["perplexity"] - 1
        print(f"\nint8 (w8a8): {speed:.2f}x the fp32 parent's tokens/s at 32 in flight, {smaller:.2f}x smaller, "
              f"perplexity {rise:+.2%} -> goal (>= 1.5x, >= 1.9x, within 5%): "
              f"{'MET' if speed >= 1.5 and smaller >= 1.9 and abs(rise) <= 0.05 else 'NOT MET'}")
    print("report: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return 0


def _figures(m: dict) -> dict:
    return {k: v for k, v in m.items() if k in ("perplexity", "greedy_agreement", "load_s")
            or k.startswith("tokens_per_s_c")}


if __name__ == "__main__":
    raise SystemExit(main())
