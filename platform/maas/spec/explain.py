"""What a spec may hold, as data: each kind's JSON schema, and any field explained by its dotted path (type,
default, bounds, description; a section lists its fields). `maas spec schema` and `maas spec explain` print
these; an editor takes the schema (e.g. yaml-language-server's ``# yaml-language-server: $schema=...``)."""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel

from maas.exceptions import SpecError
from maas.spec.loading import SPEC_CLASSES


def spec_schema(kind: Optional[str] = None) -> dict:
    """The JSON schema of the spec of ``kind``; None: of any kind's (one of them, told apart by ``kind``)."""
    if kind is None:
        from pydantic import TypeAdapter

        from maas.spec.loading import PipelineSpec

        return _written({"title": "maas pipeline spec", **TypeAdapter(PipelineSpec).json_schema()})
    return _written(_spec_class(kind).model_json_schema())


def _written(schema):
    """Without the discriminators of steps: a step is written ``{name: argument}``, it has no ``op`` key."""
    if isinstance(schema, dict):
        return {k: _written(v) for k, v in schema.items()
                if not (k == "discriminator" and isinstance(v, dict) and v.get("propertyName") == "op")}
    if isinstance(schema, list):
        return [_written(v) for v in schema]
    return schema


def _spec_class(kind: str) -> type[BaseModel]:
    if kind not in SPEC_CLASSES:
        raise SpecError([("kind", f"unknown kind {kind!r}; kinds: {', '.join(SPEC_CLASSES)}")], "maas spec")
    return SPEC_CLASSES[kind]


@dataclass
class FieldDoc:
    """One field of one kind's spec: ``fields`` lists a section's own fields as (name, type, first sentence)."""

    kind: str
    path: str
    type: str
    description: str
    default: Any = None
    required: bool = False
    bounds: list = field(default_factory=list)
    fields: list = field(default_factory=list)


def explain(path: str, kind: Optional[str] = None) -> list[FieldDoc]:
    """The field at the dotted ``path`` (``deploy.llm.max_tokens``; ``eval.tasks.type`` walks into a list's
    items) of ``kind``'s spec, or of every kind that has it when ``kind`` is None; '' is the whole spec.

    Raises:
        SpecError: an unknown kind, or a path no kind has (with the closest field name).
    """
    kinds = [kind] if kind else list(SPEC_CLASSES)
    docs, misses = [], []
    for k in kinds:
        found = _walk(_spec_class(k), [p for p in path.split(".") if p])
        if isinstance(found, str):
            misses.append(found)
        else:
            docs.append(_doc(k, path, *found))
    if not docs:
        raise SpecError([(path, misses[0] if len(kinds) == 1 else f"no kind has it ({misses[0]})")], "maas spec")
    return docs


def _walk(model: type[BaseModel], parts: list[str]):
    """(annotation, FieldInfo or None, default) at ``parts`` below ``model``, or the reason it is not there.
    A default is read from its section's default when that has one (the lm kind's train section has its own
    learning rate)."""
    current, info, walked, value = model, None, [], None
    for part in parts:
        section = _section(current)
        if section is None:
            return f"{'.'.join(walked)} is of type {_type_name(current)}, not a section"
        if part not in section.model_fields:
            close = difflib.get_close_matches(part, list(section.model_fields), n=1)
            where = ".".join(walked) or "the spec"
            return f"{where} has no '{part}'" + (f"; did you mean '{close[0]}'?" if close else
                                                 f"; it has: {', '.join(section.model_fields)}")
        info = section.model_fields[part]
        current = info.annotation
        walked.append(part)
        if isinstance(value, BaseModel):
            value = getattr(value, part)
        else:
            value = None if info.is_required() else info.get_default(call_default_factory=True)
    return current, info, value


def _section(annotation) -> Optional[type[BaseModel]]:
    """The model a field holds: itself, the one model of an Optional, or a list's item model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple) and args:
        return _section(args[0])
    if origin in (Union, types.UnionType):
        models = [m for m in (_section(a) for a in args if a is not type(None)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


_BOUNDS = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}", "min_length": "at least {} long",
           "max_length": "at most {} long", "multiple_of": "a multiple of {}", "pattern": "matches {}"}


def field_bounds(info) -> list[str]:
    """A field's constraints as text (``['>= 1', '<= 64']`` for pydantic's ``ge=1, le=64``): what ``maas spec
    explain`` prints and the generated spec reference shows."""
    return [text.format(getattr(meta, name)) for meta in info.metadata for name, text in _BOUNDS.items()
            if getattr(meta, name, None) is not None]


def _first_sentence(text: str) -> str:
    text = " ".join((text or "").split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _doc(kind: str, path: str, annotation, info, value) -> FieldDoc:
    section = _section(annotation)
    description = (info.description if info is not None else None) or (section.__doc__ if section else "") or ""
    doc = FieldDoc(kind=kind, path=path or "(the whole spec)", type=_type_name(annotation),
                   description=" ".join(description.split()))
    if info is not None:
        doc.required = info.is_required()
        if not doc.required and section is None:
            doc.default = value
        doc.bounds = field_bounds(info)
    if section is not None:
        doc.fields = [(name, _type_name(f.annotation), _first_sentence(f.description or ""))
                      for name, f in section.model_fields.items()]
    return doc
