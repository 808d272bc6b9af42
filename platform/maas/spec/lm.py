"""The language-model kind's spec (``kind: lm``): text, the decoder's size (transformers' Llama), training
defaults, generation defaults."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, InputPath, TrainSpec, _Pipeline, _Strict
from maas.spec.evaluation import EvalTaskSpec

LM_SIZE_NAMES = ("tiny", "small", "base", "125m", "300m", "1b")  # maas.models.llama.LLAMA_SIZES


class TextDataSpec(_Strict):
    source: Literal["package-docs", "files"] = Field(
        "package-docs", description="'package-docs': English sentences from installed packages' descriptions "
                                    "and docstrings (nothing is downloaded); 'files': UTF-8 text files at `path`.")
    path: Optional[str] = Field(None, description="source=files: a text file, directory, glob or URI (file://, "
                                                  "s3://, gs://).")
    packages: list[str] = Field(["numpy", "scipy", "sklearn", "pandas"], description="source=package-docs: "
                                "packages whose docstrings join the corpus (read with ast, never imported).")
    format: Literal["text", "chat"] = Field("text", description="source=files: 'text' (lines of prose, packed "
                                            "into blocks) or 'chat' (JSON lines of {\"messages\": [{role, "
                                            "content}, ...]}, one conversation per row, learnt on the assistant's "
                                            "turns; lines that do not parse or fit the context are quarantined).")
    limit: Optional[int] = Field(None, ge=10, description="At most this many sentences (package-docs) or lines "
                                                          "(files).")
    val_fraction: float = Field(0.05, ge=0, lt=0.5, description="Share of the blocks held out to validate each "
                                                                "epoch (chosen by a seeded content hash).")
    seed: int = Field(0, description="Seed of the block split.")
    max_reject_fraction: float = Field(0.05, ge=0, le=1, description="Fail the run when more than this share of "
                                       "the lines is quarantined (not UTF-8, or holding NUL bytes).")

    @model_validator(mode="after")
    def _path_for_files(self) -> "TextDataSpec":
        if self.source == "files" and not self.path:
            raise ValueError("source=files needs `path` (a text file, directory, glob or URI)")
        if self.format == "chat" and self.source != "files":
            raise ValueError("format=chat reads JSON lines: set source=files and path")
        return self


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPE_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "vocab_size")


class LoRASpec(_Strict):
    """Low-rank adapters (``peft``): the base stays frozen, only the adapters train and are published."""

    r: int = Field(8, ge=1, le=256, description="Adapter rank.")
    alpha: float = Field(16, gt=0, description="Scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1,
                                      description="Linear layers that get adapters (Llama's names by default).")


class LMModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the model (lower case).")
    base: Optional[str] = Field(None, description="Fine-tune this registry model (`name@alias` or `name/version` "
                                "in the same store: one trained here or brought with `maas models import`) "
                                "instead of training from scratch; its tokenizer and shape are kept.")
    finetune: Literal["full", "lora"] = Field("full", description="With `base`: 'full' trains every weight "
                                              "(DDP or FSDP2) and publishes a whole model; 'lora' trains adapters "
                                              "(peft) and publishes them as a version of their own on that base.")
    lora: LoRASpec = Field(default_factory=LoRASpec, description="finetune=lora: the adapters.")
    arch: Literal["llama"] = Field("llama", description="transformers' LlamaForCausalLM (RMSNorm, rotary positions, "
                                                      "SwiGLU), published as a Hugging Face folder.")
    size: Literal[LM_SIZE_NAMES] = Field("tiny", description="tiny (~0.7M parameters, CPU tests), small (~17M), "
                                         "base (~98M), 125m (~124M), 300m (~317M), 1b (~0.95B; GPUs).")
    n_layer: Optional[int] = Field(None, ge=1, description="Decoder layers (default: the size's).")
    n_head: Optional[int] = Field(None, ge=1, description="Attention heads (default: the size's).")
    n_kv_head: Optional[int] = Field(None, ge=1, description="Key/value heads (grouped-query attention; default: "
                                                             "n_head).")
    n_embd: Optional[int] = Field(None, ge=8, description="Model width (default: the size's).")
    intermediate_size: Optional[int] = Field(None, ge=8, description="MLP width (default: the size's).")
    block_size: Optional[int] = Field(None, ge=8, le=32768, description="Training context in tokens, and the "
                                      "served model's context (default: the size's).")
    vocab_size: Optional[int] = Field(None, ge=300, le=262144, description="Most tokens the byte-level BPE "
                                      "tokenizer learns from the training text (default: the size's).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention weights.")

    def config(self) -> dict:
        from maas.models.llama import llama_config

        return llama_config(self.size, n_layer=self.n_layer, n_head=self.n_head, n_kv_head=self.n_kv_head,
                            n_embd=self.n_embd, intermediate_size=self.intermediate_size,
                            block_size=self.block_size, vocab_size=self.vocab_size, dropout=self.dropout)

    @model_validator(mode="after")
    def _heads_divide(self) -> "LMModelSpec":
        if self.base is not None:
            # set and not the default: a spec that went through model_dump (the SDK's job payload) has every
            # field set, its unused shape fields at their defaults
            given = [f for f in SHAPE_FIELDS + ("size",) if f in self.model_fields_set
                     and getattr(self, f) != type(self).model_fields[f].default]
            if given:
                raise ValueError(f"model.{given[0]}: a fine-tuned model keeps its base's shape and tokenizer; "
                                 "drop it (model.block_size may be set)")
            return self
        if any(f in self.model_fields_set and getattr(self, f) != type(self).model_fields[f].get_default(
                call_default_factory=True) for f in ("finetune", "lora")):  # at its default: a model_dump's
            raise ValueError("model.finetune / model.lora need model.base (the registry model to fine-tune)")
        c = self.config()
        if c["n_embd"] % c["n_head"]:
            raise ValueError(f"n_embd ({c['n_embd']}) must be a multiple of n_head ({c['n_head']})")
        if c["n_head"] % c["n_kv_head"]:
            raise ValueError(f"n_head ({c['n_head']}) must be a multiple of n_kv_head ({c['n_kv_head']})")
        if c["n_embd"] // c["n_head"] < 32:
            raise ValueError(f"heads of {c['n_embd'] // c['n_head']} (n_embd / n_head) are too narrow for vLLM's "
                             "CPU kernels: use 32 or more (64 is every size's)")
        return self


class GenerateSpec(_Strict):
    """Sampling defaults written to the model's generation_config.json (what vLLM and transformers use when
    a request does not say); the most a request may ask for is ``deploy.llm.max_tokens``."""

    max_tokens: int = Field(128, ge=1, le=32768, description="Tokens generated per request unless it says.")
    temperature: float = Field(0.8, ge=0, le=5, description="Sampling temperature (0: greedy).")
    top_k: int = Field(40, ge=0, description="Sample among the k likeliest tokens (0: all).")


LLM_COMPRESS_METHODS = ("bf16", "w8a8", "w4a16", "w8a16")  # maas.compress.llm_quant.METHODS


class LLMGateSpec(_Strict):
    """How close a compressed decoder must stay to its parent, both measured under vLLM on held-out text."""

    max_perplexity_increase: float = Field(0.05, ge=0, description="Largest relative rise of held-out "
                                           "perplexity (0.05: +5%).")
    min_greedy_agreement: float = Field(0.5, ge=0, le=1, description="Least share of the parent's greedy tokens "
                                        "(held-out prompts, up to the first change) the variant must reproduce.")


class LMCompressSpec(_Strict):
    """Quantized variants of the trained decoder, each measured against it under vLLM and gated; the one
    ``select`` names among those that pass (the parent included) gets ``deploy.alias``."""

    variants: list[Literal[LLM_COMPRESS_METHODS]] = Field(
        [], description="Methods, each one version: 'bf16' (cast), 'w8a8' (int8 weights per channel, int8 "
                        "activations per token), 'w4a16' (int4 weights in groups), 'w8a16' (int8 weights in "
                        "groups; vLLM runs it on GPUs only). Empty: no compression.")
    gate: LLMGateSpec = Field(default_factory=LLMGateSpec, description="The quality gate.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which passing version gets deploy.alias: the most tokens/s at the largest "
                               "concurrency, or the fewest bytes.")
    group_size: int = Field(128, ge=0, le=1024, description="Weights per scale for grouped methods (w4a16, "
                            "w8a16); lowered to a power of two dividing every layer's width; 0: one scale "
                            "per output channel (smaller, coarser).")

    @field_validator("group_size")
    @classmethod
    def _group(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("group_size is 0 (per output channel) or 16 and more")
        return value
    eval_blocks: int = Field(32, ge=1, le=4096, description="Held-out blocks for perplexity.")
    prompts: int = Field(16, ge=1, le=256, description="Held-out prompts for greedy agreement.")
    max_tokens: int = Field(32, ge=1, le=4096, description="Greedy tokens compared per prompt (and generated per "
                                                           "request when timing).")
    concurrency: list[int] = Field([1, 32], min_length=1, description="Requests in flight when timing tokens/s.")

    @model_validator(mode="after")
    def _unique(self) -> "LMCompressSpec":
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"compress.variants names a method twice: {self.variants}")
        return self


LM_TRAIN_DEFAULTS = {"learning_rate": 1e-3, "max_grad_norm": 1.0, "lr_schedule": "cosine", "warmup_fraction": 0.05}


class LMEvalSpec(_Strict):
    """Champion/challenger for a language model: a new version must read held-out text as well as the one
    serving deploy.alias."""

    against_champion: bool = Field(
        True, description="Before deploy.alias moves, score the version it points at now (the champion) and the new "
                          "one on this run's held-out text in bits per byte (each with its own tokenizer); a new "
                          "version more than max_bits_per_byte_increase above it is published as 'candidate' and "
                          "the alias stays. The first version of a model has no champion.")
    max_bits_per_byte_increase: float = Field(
        0.02, ge=0, description="How many bits per byte more than the champion a challenger may need and still "
                                "take the alias.")
    tasks: list[EvalTaskSpec] = Field(
        default_factory=list, max_length=32,
        description="lm-evaluation-harness tasks from JSON Lines files (multiple choice by log-likelihood, "
                    "generation by exact or pattern match), scored for every new version (task_<name> in its "
                    "metrics, with the harness version and the task's hash) and for the champion.")
    cloze: bool = Field(
        True, description="Also score a multiple-choice cloze task made from this run's held-out text (each line "
                          "cut before its middle word, that word among 3 others of the text): a task score for "
                          "every run with no extra data (task_cloze).")
    max_task_score_drop: float = Field(
        0.02, ge=0, le=1, description="How far below the champion's score, on any task, a challenger may fall "
                                      "and still take the alias.")

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: list) -> list:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique (got {names})")
        if "cloze" in names:
            raise ValueError("'cloze' is the built-in task made from held-out text (eval.cloze): name yours "
                             "otherwise")
        return tasks


class LMPipelineSpec(_Pipeline):
    """A decoder (transformers' Llama): text -> BPE tokenizer and token blocks -> Ray Train (DDP/FSDP2) ->
    a Hugging Face folder in the registry -> vLLM engines behind the maas endpoint."""

    kind: Literal["lm"] = Field(..., description="'lm' for this pipeline.")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    data: TextDataSpec = Field(default_factory=TextDataSpec, description="The text to learn.")
    model: LMModelSpec = Field(..., description="Which decoder.")
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(**LM_TRAIN_DEFAULTS),
                             description="How to train it (next-token accuracy ranks checkpoints). Unset keys take "
                                         "the language-model defaults: " + ", ".join(
                                             f"{k}={v}" for k, v in LM_TRAIN_DEFAULTS.items()) + ".")
    generate: GenerateSpec = Field(default_factory=GenerateSpec, description="Serving defaults for generation.")
    compress: LMCompressSpec = Field(default_factory=LMCompressSpec, description="Quantized variants and their "
                                                                                 "gate.")
    eval: LMEvalSpec = Field(default_factory=LMEvalSpec, description="How a new version is compared with the one "
                                                                     "serving traffic before the alias moves.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

    def inputs(self) -> list[InputPath]:
        text = [InputPath("data.path", self.data.path, "text")] if self.data.source == "files" and self.data.path \
            else []
        return text + [InputPath(f"eval.tasks[{i}].path", t.path, "json") for i, t in enumerate(self.eval.tasks)]

    @model_validator(mode="after")
    def _compress_whole_models(self) -> "LMPipelineSpec":
        if self.compress.variants and self.model.base is not None and self.model.finetune == "lora":
            raise ValueError("compress.variants: a LoRA fine-tune publishes adapters, not a model to quantize; "
                             "quantize the base (its own run) or fine-tune with model.finetune=full")
        return self

    @model_validator(mode="before")
    @classmethod
    def _lm_train_defaults(cls, data: Any) -> Any:
        """A `train:` mapping that sets some keys keeps the language-model defaults for the others."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": {**LM_TRAIN_DEFAULTS, **data["train"]}}
        return data
