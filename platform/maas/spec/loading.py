"""Loading specs: YAML files, mappings from the SDK and jobs, ``key=value`` overrides, and error messages
that name every problem's field path (with "did you mean")."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from maas.exceptions import SpecError
from maas.spec.classifier import ClassifierSpec
from maas.spec.common import DeploySpec
from maas.spec.encoder import EncoderPipelineSpec
from maas.spec.fields import section_of, walk
from maas.spec.llm import LLMPipelineSpec
from maas.spec.lm import LMPipelineSpec

# the spec class of each kind: `kind:` in a spec picks one (maas.pipelines.KINDS runs it)
SPEC_CLASSES = {"classifier": ClassifierSpec, "encoder": EncoderPipelineSpec, "lm": LMPipelineSpec,
                "llm": LLMPipelineSpec}
PipelineSpec = Union[ClassifierSpec, EncoderPipelineSpec, LMPipelineSpec, LLMPipelineSpec]  # any kind's spec


def _fields_at(model: type[BaseModel], loc: tuple) -> Optional[list[str]]:
    """Field names of the section found by walking ``loc`` from ``model`` (None if not a section); the walk is
    ``maas spec explain``'s, so list items (``ops[0]``-style integer parts are skipped) resolve the same."""
    found = walk(model, [str(p) for p in loc if not isinstance(p, int)]) if loc else (model, None, None)
    section = None if isinstance(found, str) else section_of(found[0])
    return list(section.model_fields) if section is not None else None


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
        elif e["type"] == "value_error" and "\n" in e["msg"] or (loc and str(e["msg"]).startswith(
                f"Value error, {loc[-1]}[")):
            # a list validator's lines, each 'name[i].op...: problem': one problem per line, at its own path
            parent = ".".join(str(p) for p in loc[:-1])
            for line in e["msg"].removeprefix("Value error, ").splitlines():
                head, sep, rest = line.partition(": ")
                if head.startswith(f"{loc[-1]}[") and sep:
                    problems.append((f"{parent}.{head}" if parent else head, rest))
                else:
                    problems.append((path, line))
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


def spec_from_dict(raw: Any, overrides: Optional[list[str]] = None, source: str = "spec") -> PipelineSpec:
    """Validate a mapping (from YAML, JSON or the SDK) into the spec of its ``kind`` (default: classifier).

    Raises:
        SpecError: listing every problem with its field path.
    """
    if not isinstance(raw, dict):
        raise SpecError([("", f"the spec must be a mapping, got {type(raw).__name__}")], source)
    raw = apply_overrides(raw, overrides or [])
    kind = raw.get("kind", "classifier")
    model = SPEC_CLASSES.get(kind)
    if model is None:
        raise SpecError([("kind", f"unknown pipeline kind {kind!r}; use " + " or ".join(map(repr, SPEC_CLASSES)))],
                        source)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_problems(err, model), source) from None


def deploy_spec_from_dict(raw: dict, source: str = "deploy settings") -> DeploySpec:
    """Validate deploy settings alone (``maas serve``'s flags and a spec's ``deploy``) into a DeploySpec.

    Raises:
        SpecError: every problem at its ``deploy.`` path.
    """
    try:
        return DeploySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError([(f"deploy.{path}".rstrip("."), msg) for path, msg in _problems(err, DeploySpec)],
                        source) from None


def load_spec(path: str | Path, overrides: Optional[list[str]] = None) -> PipelineSpec:
    """Load and validate a YAML spec file, then apply ``key=value`` overrides.

    Relative ``data.path`` and ``store`` values stay relative to the current directory, like any CLI path.

    Raises:
        SpecError: the file is missing, is not YAML, or its content is invalid (all problems at once).
    """
    p = Path(path)
    if p.is_dir():
        raise SpecError([("", f"{p} is a folder; give a spec file in it, e.g. {p / 'spec.yaml'}")], str(p))
    if not p.is_file():
        raise SpecError([("", f"spec file not found: {p} (run from the project root or pass a full path)")], str(p))
    try:
        text = p.read_text()
        raw = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise SpecError([("", f"{p} is not a text file; a spec is YAML")], str(p)) from None
    except yaml.YAMLError as exc:
        raise SpecError([("", _yaml_problem(p, exc))], str(p)) from None
    if raw is None:
        raise SpecError([("", f"{p} is empty; a spec starts with its kind and model, e.g. `kind: classifier` and "
                              "`model: {name: digits}` (examples/ has one of each kind; `maas spec schema`)")], str(p))
    return spec_from_dict(raw, overrides, source=str(p))


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """A YAML error as '<file> line L, column C: what' (PyYAML names the stream '<unicode string>')."""
    mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    context = getattr(exc, "context", None)
    if context and opened is not None:
        context += f" (from line {opened.line + 1}, column {opened.column + 1})"
    what = ": ".join(x for x in (context, getattr(exc, "problem", None)) if x) or str(exc)
    if mark is None:
        return f"{path} is not valid YAML: {what}"
    return f"{path} line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}"
