"""The language-model kind's spec (``kind: lm``): text, the GPT's size, training defaults, generation."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, TrainSpec, _Pipeline, _Strict


GPT_SIZE_NAMES = ("tiny", "small", "base", "125m", "300m", "1b")  # maas.models.gpt.GPT_SIZES


class TextDataSpec(_Strict):
    source: Literal["package-docs", "files"] = Field(
        "package-docs", description="'package-docs': English sentences from installed packages' descriptions "
                                    "and docstrings (nothing is downloaded); 'files': UTF-8 text files at `path`.")
    path: Optional[str] = Field(None, description="source=files: a text file, directory, glob or URI (file://, "
                                                  "s3://, gs://).")
    packages: list[str] = Field(["numpy", "scipy", "sklearn", "pandas"], description="source=package-docs: "
                                "packages whose docstrings join the corpus (read with ast, never imported).")
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
        return self


class GPTModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the model (lower case).")
    arch: Literal["gpt"] = Field("gpt", description="A GPT-style byte-level decoder (maas.models.gpt).")
    size: Literal[GPT_SIZE_NAMES] = Field("tiny", description="tiny (~0.1M parameters, CPU tests), small (~11M), "
                                                               "base (~86M), 125m (~127M), 300m (~304M), 1b (~1.0B; GPUs).")
    n_layer: Optional[int] = Field(None, ge=1, description="Transformer blocks (default: the size's).")
    n_head: Optional[int] = Field(None, ge=1, description="Attention heads (default: the size's).")
    n_embd: Optional[int] = Field(None, ge=8, description="Model width (default: the size's).")
    block_size: Optional[int] = Field(None, ge=8, le=8192, description="Context length in bytes (default: the "
                                                                       "size's).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in attention and MLP outputs.")

    def config(self) -> dict:
        from maas.models.gpt import gpt_config

        return gpt_config(self.size, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                          block_size=self.block_size, dropout=self.dropout)

    @model_validator(mode="after")
    def _heads_divide(self) -> "GPTModelSpec":
        c = self.config()
        if c["n_embd"] % c["n_head"]:
            raise ValueError(f"n_embd ({c['n_embd']}) must be a multiple of n_head ({c['n_head']})")
        return self


class GenerateSpec(_Strict):
    """Defaults of a served text generator; each request may change them."""

    max_tokens: int = Field(128, ge=1, le=4096, description="Bytes generated per request unless it says.")
    max_tokens_limit: int = Field(1024, ge=1, le=65536, description="The most a request may ask for.")
    temperature: float = Field(0.8, ge=0, le=5, description="Sampling temperature (0: greedy).")
    top_k: int = Field(40, ge=0, le=256, description="Sample among the k likeliest bytes (0: all).")


LM_TRAIN_DEFAULTS = {"learning_rate": 1e-3, "max_grad_norm": 1.0, "lr_schedule": "cosine", "warmup_fraction": 0.05}


class LMPipelineSpec(_Pipeline):
    """A byte-level GPT: text -> blocks -> Ray Train (DDP/FSDP) -> registry -> streamed generation."""

    kind: Literal["lm"] = Field(..., description="'lm' for this pipeline.")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    data: TextDataSpec = Field(default_factory=TextDataSpec, description="The text to learn.")
    model: GPTModelSpec = Field(..., description="Which decoder.")
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(**LM_TRAIN_DEFAULTS),
                             description="How to train it (next-byte accuracy ranks checkpoints). Unset keys take "
                                         "the language-model defaults: " + ", ".join(
                                             f"{k}={v}" for k, v in LM_TRAIN_DEFAULTS.items()) + ".")
    generate: GenerateSpec = Field(default_factory=GenerateSpec, description="Serving defaults for generation.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

    @model_validator(mode="before")
    @classmethod
    def _lm_train_defaults(cls, data: Any) -> Any:
        """A `train:` mapping that sets some keys keeps the language-model defaults for the others."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": {**LM_TRAIN_DEFAULTS, **data["train"]}}
        return data
