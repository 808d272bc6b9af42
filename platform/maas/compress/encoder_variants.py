"""Encoder variants: a chain of steps applied to a copy of the parent (``maas.compress.encoder_ops``), written
as a self-contained artifact (weights or ONNX graph, ``model.json``, the parent's ``tokenizer.json``). The
encoder pipeline (``maas.pipelines.encoder``) measures, gates and publishes them."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from maas.compress import encoder_ops as ops
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.encoder import TOKENIZER
from maas.models.quantized import apply_torchao
from maas.spec import DistillStep, FinetuneStep, PruneStructuredStep, PruneUnstructuredStep, VariantSpec

Progress = Callable[[str, str], None]


def build_variant(variant: VariantSpec, parent_dir: Path, out: Path, corpus, run_dir: str,
                  max_length: int, progress: Progress) -> tuple[str, dict]:
    """Apply ``variant``'s steps to a copy of the parent in ``parent_dir``; write the artifact to ``out``.

    Returns:
        (runtime, details) where details records what the steps did (sparsity, widths, distillation history).
    """
    from maas.compress.distill import distill, student_from_teacher

    model, config = load_torch_model(parent_dir)
    final = variant.final
    details: dict = {"steps": variant.step_names()}
    masks = None
    for step in variant.model_steps:
        if isinstance(step, PruneUnstructuredStep):
            masks = ops.prune_unstructured(model, step.amount)
            details["sparsity"] = round(ops.sparsity(model), 4)
        elif isinstance(step, PruneStructuredStep):
            model, config = ops.prune_structured(model, config, step.amount)
            details["intermediate_sizes"] = config["intermediate_sizes"]
        elif isinstance(step, (DistillStep, FinetuneStep)):
            if isinstance(step, DistillStep):
                model, config = student_from_teacher(model, config, list(step.layers))
                details["layers"] = list(step.layers)
            progress("compress", f"{variant.name}: {step.op} as a Ray Train job "
                                 f"({step.num_workers} worker(s), {step.epochs} epoch(s))")
            teacher_emb = _parent_embeddings(parent_dir, corpus.val)
            train = corpus.train[:step.max_sentences] if step.max_sentences else corpus.train
            model, config, history = distill(
                parent_dir, model, config, train, corpus.val, teacher_emb, run_dir, f"{variant.name}-{step.op}",
                epochs=step.epochs, learning_rate=step.learning_rate, batch_size=step.batch_size,
                num_workers=step.num_workers, masks=masks, max_length=max_length, use_gpu=torch.cuda.is_available())
            details[f"{step.op}_history"] = history
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parent_dir / TOKENIZER, out / TOKENIZER)
    config = {**config, "max_length": max_length}
    if final in ops.ONNX_FINALS:
        save_torch_model(model, config, out)  # the torch weights stay beside the graph: lineage, re-export
        if final == "onnx_fp32":
            ops.export_encoder_onnx(model, out / "model.onnx")
        else:
            from maas.compress.quantize import quantize_int8_dynamic, quantize_int8_rowwise

            with tempfile.TemporaryDirectory(prefix="maas-onnx-") as tmp:
                fp32 = ops.export_encoder_onnx(model, Path(tmp) / "model.onnx")
                if final == "onnx_int8":
                    quantize_int8_rowwise(fp32, out / "model.onnx")
                else:
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



