"""What a spec may hold, as data: each kind's JSON schema, and any field explained by its dotted path (type,
default, bounds, description; a section lists its fields). `maas spec schema` and `maas spec explain` print
these; an editor takes the schema (e.g. yaml-language-server's ``# yaml-language-server: $schema=...``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel

from maas.exceptions import SpecError
from maas.spec.fields import field_bounds, section_of, type_name, walk
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
        found = walk(_spec_class(k), [p for p in path.split(".") if p])
        if isinstance(found, str):
            misses.append(found)
        else:
            docs.append(_doc(k, path, *found))
    if not docs:
        raise SpecError([(path, misses[0] if len(kinds) == 1 else f"no kind has it ({misses[0]})")], "maas spec")
    return docs


def _first_sentence(text: str) -> str:
    text = " ".join((text or "").split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def _doc(kind: str, path: str, annotation, info, value) -> FieldDoc:
    section = section_of(annotation)
    description = (info.description if info is not None else None) or (section.__doc__ if section else "") or ""
    doc = FieldDoc(kind=kind, path=path or "(the whole spec)", type=type_name(annotation),
                   description=" ".join(description.split()))
    if info is not None:
        doc.required = info.is_required()
        if not doc.required and section is None:
            doc.default = value
        doc.bounds = field_bounds(info)
    if section is not None:
        doc.fields = [(name, type_name(f.annotation), _first_sentence(f.description or ""))
                      for name, f in section.model_fields.items()]
    return doc
