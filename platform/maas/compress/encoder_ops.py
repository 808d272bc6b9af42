"""Compression steps for sentence encoders: pruning, torchao quantization, casting, ONNX export + int8.

A variant is a chain of steps applied to a copy of its parent (``maas.compress.encoder_variants`` builds it,
``maas.pipelines.encoder`` measures and gates it): model-to-model steps (``prune_unstructured``,
``prune_structured``, ``distill``, ``finetune``) and at most one final step that fixes how the variant is
stored and run:

========================  ==============  ============================================================
final step                runtime         artifact
========================  ==============  ============================================================
(none)                    torch           fp32 safetensors + model.json
``fp16`` / ``bf16``       torch           half-precision safetensors (``dtype`` in model.json)
``torchao_int8_weight``   torchao         fp32 safetensors + recipe; int8 weight-only applied at load
``torchao_w8a8``          torchao         same, int8 dynamic activations x int8 weights
``torchao_int4_weight``   torchao         same, int4 weight-only, groups of 32
``onnx_fp32``             onnxruntime     model.onnx (fp32)
``onnx_int8``             onnxruntime     model.onnx, int8 GEMMs: weights per channel (7 bits), activations
                                          per row (batch-invariant; ~2x fp32 at batch 64)
``onnx_int8_per_tensor``  onnxruntime     model.onnx, dynamic int8: weights per channel, one activation
                                          scale per input tensor (fastest on CPU; a text's vector depends
                                          on its batch, so the default gate rejects it)
========================  ==============  ============================================================

Every variant is measured for batch invariance (``batch_variance``: how far a text's vector moves between
alone and batched, padded, with others); the gate's ``max_batch_variance`` (1e-5) keeps the rest out.

torchao's quantized tensors are subclasses that safetensors cannot store, and a pickle is not an option;
the recipe is deterministic given the weights, so the registry keeps fp32 weights plus the recipe and
records both the artifact size and the in-memory weight size (``weight_bytes``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from maas.exceptions import CompressionError
from maas.models.artifacts import quiet_export as _quiet
from maas.models.quantized import TORCHAO

ONNX_FINALS = ("onnx_fp32", "onnx_int8", "onnx_int8_per_tensor")


def runtime_of(final: str | None) -> str:
    if final in ONNX_FINALS:
        return "onnxruntime"
    return "torchao" if final in TORCHAO else "torch"


# ---------------------------------------------------------------------------------------------- pruning

def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The transformer's Linear layers (embeddings excluded: pruning a lookup table saves no compute)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def prune_unstructured(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` smallest-magnitude weights of every Linear (per layer); returns the keep-masks, so
    fine-tuning can hold the zeros at zero. Dense kernels run no faster: this is the quality baseline for
    sparse kernels and for int8 on top."""
    if not 0 < amount < 1:
        raise CompressionError(f"prune_unstructured.amount must be within (0, 1), got {amount}")
    masks = {}
    with torch.no_grad():
        for name, lin in linear_layers(model):
            w = lin.weight
            k = int(w.numel() * amount)
            threshold = w.abs().flatten().kthvalue(k).values if k else w.abs().min() - 1
            mask = w.abs() > threshold
            w.mul_(mask)
            masks[name] = mask
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, lin in linear_layers(model):
            if name in masks:
                lin.weight.mul_(masks[name].to(lin.weight.device))


def prune_structured(model: nn.Module, config: dict, amount: float) -> tuple[nn.Module, dict]:
    """Remove the ``amount`` least important feed-forward neurons of every layer (the L2 norm of a neuron's
    input row times its output column): the matrices really shrink, so the variant is smaller and faster on
    any kernel. Returns (new model, new config) with per-layer ``intermediate_sizes``."""
    from maas.models import build_model

    if not 0 < amount < 1:
        raise CompressionError(f"prune_structured.amount must be within (0, 1), got {amount}")
    new_config = copy.deepcopy(config)
    keeps = []
    for layer in model.encoder.layer:
        w_in, w_out = layer.intermediate.dense.weight, layer.output.dense.weight  # [I, H], [H, I]
        score = w_in.norm(dim=1) * w_out.norm(dim=0)
        n_keep = max(1, int(round(len(score) * (1 - amount))))
        keeps.append(torch.sort(torch.topk(score, n_keep).indices).values)
    new_config["intermediate_sizes"] = [len(k) for k in keeps]
    pruned = build_model(new_config)
    state = model.state_dict()
    for i, keep in enumerate(keeps):
        p = f"encoder.layer.{i}."
        state[p + "intermediate.dense.weight"] = state[p + "intermediate.dense.weight"][keep]
        state[p + "intermediate.dense.bias"] = state[p + "intermediate.dense.bias"][keep]
        state[p + "output.dense.weight"] = state[p + "output.dense.weight"][:, keep]
    pruned.load_state_dict(state, strict=True)
    return pruned.eval(), new_config


def sparsity(model: nn.Module) -> float:
    total = zeros = 0
    for _, lin in linear_layers(model):
        total += lin.weight.numel()
        zeros += int((lin.weight == 0).sum())
    return zeros / max(total, 1)


# ------------------------------------------------------------------------------------------ quantization

def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters as held in memory (quantized tensor subclasses report their packed size)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return int(total)


# ------------------------------------------------------------------------------------------------- ONNX

def export_encoder_onnx(model: nn.Module, path: str | Path) -> Path:
    """Export to ONNX with dynamic batch and sequence axes: inputs ``input_ids``/``attention_mask`` (int64),
    output ``sentence_embedding``. TorchScript-based exporter (opset 17): on this BERT graph it exports in
    ~1 s and runs as fast under ONNX Runtime as the dynamo exporter's graph, which takes ~7 s."""
    path = Path(path)
    model = copy.deepcopy(model).float().eval()
    ids = torch.ones(2, 8, dtype=torch.int64)
    with _quiet():
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "sentence_embedding": {0: "batch"}})
    return path
