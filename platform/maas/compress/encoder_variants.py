"""Encoder variants: a chain of steps applied to a copy of the parent (``maas.compress.encoder_ops``), written
as a self-contained artifact (weights or ONNX graph, ``model.json``, the parent's ``tokenizer.json``). The
encoder pipeline (``maas.pipelines.encoder``) measures, gates and publishes them."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from maas.compress import encoder_ops as ops
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.encoder import TOKENIZER
from maas.models.quantized import apply_torchao
from maas.spec import VariantSpec

Progress = Callable[[str, str], None]


def _split_steps(variant: VariantSpec) -> tuple[list[tuple[str, dict]], Optional[str]]:
    steps = [(s, {}) if isinstance(s, str) else next(iter(s.items())) for s in variant.steps]
    final = steps[-1][0] if steps[-1][0] in ops.FINAL_STEPS else None
    return [(n, a or {}) for n, a in (steps[:-1] if final else steps)], final


def build_variant(variant: VariantSpec, parent_dir: Path, out: Path, corpus, run_dir: str,
                  max_length: int, progress: Progress) -> tuple[str, dict]:
    """Apply ``variant``'s steps to a copy of the parent in ``parent_dir``; write the artifact to ``out``.

    Returns:
        (runtime, details) where details records what the steps did (sparsity, widths, distillation history).
    """
    from maas.compress.distill import distill, student_from_teacher

    model, config = load_torch_model(parent_dir)
    model_steps, final = _split_steps(variant)
    details: dict = {"steps": [n for n, _ in model_steps] + ([final] if final else [])}
    masks = None
    for name, args in model_steps:
        if name == "prune_unstructured":
            masks = ops.prune_unstructured(model, float(args["amount"]))
            details["sparsity"] = round(ops.sparsity(model), 4)
        elif name == "prune_structured":
            model, config = ops.prune_structured(model, config, float(args["amount"]))
            details["intermediate_sizes"] = config["intermediate_sizes"]
        elif name in ("distill", "finetune"):
            if name == "distill":
                model, config = student_from_teacher(model, config, [int(i) for i in args["layers"]])
                details["layers"] = [int(i) for i in args["layers"]]
            progress("compress", f"{variant.name}: {name} as a Ray Train job "
                                 f"({args.get('num_workers', 1)} worker(s), {args.get('epochs', 2)} epoch(s))")
            teacher_emb = _parent_embeddings(parent_dir, corpus.val)
            train = corpus.train[:int(args["max_sentences"])] if args.get("max_sentences") else corpus.train
            model, config, history = distill(
                parent_dir, model, config, train, corpus.val, teacher_emb, run_dir, f"{variant.name}-{name}",
                epochs=int(args.get("epochs", 2)), learning_rate=float(args.get("learning_rate", 3e-4)),
                batch_size=int(args.get("batch_size", 32)), num_workers=int(args.get("num_workers", 1)),
                masks=masks, max_length=max_length, use_gpu=torch.cuda.is_available())
            details[f"{name}_history"] = history
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parent_dir / TOKENIZER, out / TOKENIZER)
    config = {**config, "max_length": max_length}
    if final in ("onnx_fp32", "onnx_int8"):
        save_torch_model(model, config, out)  # the torch weights stay beside the graph: lineage, re-export
        if final == "onnx_fp32":
            ops.export_encoder_onnx(model, out / "model.onnx")
        else:
            from maas.compress.quantize import quantize_int8_dynamic

            with tempfile.TemporaryDirectory(prefix="maas-onnx-") as tmp:
                fp32 = ops.export_encoder_onnx(model, Path(tmp) / "model.onnx")
                quantize_int8_dynamic(fp32, out / "model.onnx", per_channel=True)
        (out / "model.safetensors").unlink()  # served from the graph alone: size is the graph's
    elif final in ("fp16", "bf16"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[final]
        save_torch_model(model.to(dtype), {**config, "dtype": str(dtype).removeprefix("torch.")}, out)
    elif final in ops.TORCHAO:
        save_torch_model(model, {**config, "quantize": final}, out)
        details["weight_bytes"] = ops.weight_bytes(apply_torchao(copy.deepcopy(model), final))
    else:
        save_torch_model(model, config, out)
    return ops.runtime_of(final), details


def _parent_embeddings(parent_dir: Path, texts: list) -> np.ndarray:
    from maas.models.predictor import EncoderPredictor

    predictor = EncoderPredictor(parent_dir, "torch")
    return np.concatenate([predictor(texts[i:i + 64]) for i in range(0, len(texts), 64)])


def artifact_files(folder: Path) -> dict:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def artifact_bytes(folder: Path) -> int:
    """Bytes that carry the model (weights or graph), not the tokenizer and JSON that every variant shares."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".safetensors"))


def step_names(variant: VariantSpec) -> list:
    return [s if isinstance(s, str) else next(iter(s)) for s in variant.steps]


