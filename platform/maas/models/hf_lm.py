"""Fine-tuning a Hugging Face causal LM that a registry version holds (trained here or imported): the builder
the train stage uses (``arch: hf_causal_lm``), with ``peft`` LoRA adapters when asked, and what a run
publishes: a whole model folder (full fine-tuning) or an adapter folder whose base is a registry version.

``model.json`` of such a run holds the base's ``config.json`` (``hf_config``), so a checkpoint rebuilds with no
access to the base's files; the base's weights are read once, when the workers build the model to train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import nn

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def build_hf_causal_lm(hf_config: dict, block_size: int, lora: Optional[dict] = None,
                       weights: Optional[str] = None) -> nn.Module:
    """The base model (its weights from the folder ``weights`` when given, else random of that shape: a
    checkpoint loads over it) in float32 with SDPA attention, wrapped with LoRA adapters when ``lora`` is
    set ({r, alpha, dropout, target_modules}): only the adapters then require gradients."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if weights:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32, attn_implementation="sdpa")
    else:
        fields = {k: v for k, v in hf_config.items() if k not in ("architectures", "transformers_version")}
        config = AutoConfig.for_model(**fields)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM"))
    return model


def finetune_config(base_folder: str | Path, block_size: Optional[int], lora: Optional[dict]) -> dict:
    """model.json of a fine-tuning run: the base's config.json, the training context (at most the base's),
    the adapters."""
    hf = json.loads((Path(base_folder) / "config.json").read_text())
    context = hf.get("max_position_embeddings") or 2048
    block = min(block_size or min(context, 512), context)
    return {"arch": "hf_causal_lm", "hf_config": hf, "block_size": block, "lora": dict(lora) if lora else None}


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write a LoRA model's adapters (adapter_config.json, adapter_model.safetensors): what vLLM loads onto
    the running base engine."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card stub
    return folder


def check_adapter_folder(folder: Path, base_signature: dict, base_ref: str) -> tuple[dict[str, Path], dict]:
    """({artifact name: path}, signature) of an adapter folder for a base version; raises MaasError naming
    what vLLM could not load."""
    from maas.exceptions import MaasError

    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    if ADAPTER_CONFIG not in files or ADAPTER_WEIGHTS not in files:
        raise MaasError(f"{folder}: an adapter needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    config = json.loads(files[ADAPTER_CONFIG].read_text())
    if config.get("peft_type") != "LORA":
        raise MaasError(f"{folder}: peft_type {config.get('peft_type')!r}; vLLM serves LORA adapters")
    signature = {**{k: v for k, v in base_signature.items() if k not in ("format",)},
                 "format": "peft-lora", "base": base_ref, "lora_rank": int(config["r"]),
                 "lora_alpha": config.get("lora_alpha"), "target_modules": sorted(config.get("target_modules") or [])}
    return files, signature
