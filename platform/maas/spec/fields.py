"""Walking spec models by field path: what ``maas spec explain``, the loader's did-you-mean and the generated
spec reference share (a field's section, its type in words, its bounds)."""

from __future__ import annotations

import difflib
import json
import types
import typing
from typing import Literal, Optional, Union

from pydantic import BaseModel


def walk(model: type[BaseModel], parts: list[str]):
    """(annotation, FieldInfo or None, default) at ``parts`` below ``model``, or the reason it is not there.
    A default is read from its section's default when that has one (the lm kind's train section has its own
    learning rate)."""
    current, info, walked, value = model, None, [], None
    for part in parts:
        section = section_of(current)
        if section is None:
            return f"{'.'.join(walked)} is of type {type_name(current)}, not a section"
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


def section_of(annotation) -> Optional[type[BaseModel]]:
    """The model a field holds: itself, the one model of an Optional, or a list's item model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple) and args:
        return section_of(args[0])
    if origin in (Union, types.UnionType):
        models = [m for m in (section_of(a) for a in args if a is not type(None)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # its constraints are the field's bounds
        return type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
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
