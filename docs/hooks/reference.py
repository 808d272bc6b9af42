"""The reference pages, generated from the code at every build (an mkdocs hook; `make docs`).

Nothing on these pages is written by hand: every spec field with its type, default and description comes from
the pydantic models, the CLI from its argparse parser, the HTTP API from the application's own OpenAPI
document, the gRPC service from its compiled descriptor set. A field added to a spec shows up with no doc edit.
``pages()`` returns {path under docs/: markdown}; the tests call it too.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = "reference/spec"
KIND_PAGES = {"classifier": "classifier", "encoder": "encoder", "lm": "lm", "llm": "llm"}
SHARED = ("train", "deploy")  # sections every kind has, documented once on the shared page


# ------------------------------------------------------------------------------------------------ specs

def _anchor(path: str) -> str:
    return path.replace(".", "-").replace("[]", "").replace("_", "-").replace(" ", "-").lower() or "top"


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, list, dict, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += [m for m in _models_in(arg) if m not in found]
    return found


def _type_name(annotation, links: dict) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        target = links.get(annotation)
        return f"[{annotation.__name__}]({target})" if target else annotation.__name__
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`" for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0], links)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a, links) for a in args)
    if origin in (list, tuple, set, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a, links) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(its section's defaults)"
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _constraints(field) -> str:
    from maas.spec.fields import field_bounds  # the same words `maas spec explain` prints

    bounds = field_bounds(field)
    return f" ({', '.join(f'`{b}`' for b in bounds)})" if bounds else ""


def _sections(root: type[BaseModel], root_path: str, stop: dict) -> list[tuple[str, type[BaseModel]]]:
    """(path, model) for ``root`` and every model under it, breadth first, each model once; models in
    ``stop`` are documented elsewhere and not entered."""
    out, queue, seen = [], [(root_path, root)], {root}
    while queue:
        path, model = queue.pop(0)
        out.append((path, model))
        for name, field in model.model_fields.items():
            held = _models_in(field.annotation)
            base = (f"{path}.{name}" if path else name) + ("[]" if typing.get_origin(field.annotation) is list
                                                          else "")
            for sub in held:
                if sub in seen or sub in stop:
                    continue
                seen.add(sub)
                queue.append((f"{base} {sub.__name__}" if len(held) > 1 else base, sub))
    return out


def _model_table(model: type[BaseModel], links: dict) -> str:
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_type_name(field.annotation, links)} | {_default(field)} | "
                    f"{_cell(field.description)}{_constraints(field)} |")
    return "\n".join(rows)


def _spec_page(title: str, intro: str, sections: list[tuple[str, type[BaseModel]]], links: dict) -> str:
    parts = [f"# {title}", "", intro, ""]
    for path, model in sections:
        heading = f"`{path}`" if path else "Top level"
        doc = _cell((model.__doc__ or "").strip().split("\n\n")[0])
        parts += [f"## {heading} {{#{_anchor(path)}}}", "", f"*{model.__name__}*" + (f": {doc}" if doc and
                  not doc.startswith("Usage docs") else ""), "", _model_table(model, links), ""]
    return "\n".join(parts)


def spec_pages() -> dict[str, str]:
    from maas.spec import SPEC_CLASSES
    from maas.spec.common import DeploySpec, TrainSpec

    shared_sections = _sections(TrainSpec, "train", {}) + _sections(DeploySpec, "deploy", {})
    shared_models = {m: path for path, m in shared_sections}
    links_shared = {m: f"#{_anchor(p)}" for m, p in shared_models.items()}
    pages = {f"{SPEC_DIR}/shared.md": _spec_page(
        "Spec: `train` and `deploy` (every kind)",
        "Every kind's spec has these two sections (`kind: encoder` and `kind: llm` train nothing and ignore "
        "`train`). Override any field on the command line as `section.field=value`, e.g. "
        "`deploy.llm.kv_cache_gib=4`.", shared_sections, links_shared)}
    for kind, cls in SPEC_CLASSES.items():
        sections = _sections(cls, "", set(shared_models))
        links = {m: f"#{_anchor(p)}" for p, m in sections}
        links.update({m: f"shared.md#{_anchor(p)}" for m, p in shared_models.items()})
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        pages[f"{SPEC_DIR}/{KIND_PAGES[kind]}.md"] = _spec_page(
            f"Spec: `kind: {kind}`", f"{_cell(doc)} `train` and `deploy` are on the [shared page](shared.md).",
            sections, links)
    return pages


# --------------------------------------------------------------------------------------------------- CLI

def cli_page() -> str:
    from maas.cli import build_parser, subcommands

    parts = ["# CLI: `maas`", "", "Generated from the command's own parser (`maas <command> --help` prints the "
             "same).", ""]

    def walk(parser, name, depth):
        parts.extend([f"{'#' * min(depth, 4)} `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""])
        for sub_name, sub in subcommands(parser).items():
            walk(sub, f"{name} {sub_name}", depth + 1)

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal's width: the same on every machine
    try:
        walk(build_parser(), "maas", 2)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------- HTTP

def http_page(document: dict) -> str:
    parts = ["# HTTP API", "", f"Generated from the application's own OpenAPI document ({document['openapi']}; "
             "a running endpoint serves it at `GET /openapi.json`, and [here it is](openapi.json)). With "
             "`MAAS_API_KEYS` set, or named keys in the store (`maas keys`), every route without *open* needs "
             "`Authorization: Bearer <key>` (401 without; 403 for a model outside a named key's models; 429 past a "
             "key's request or token limit). The `/maas/v1` routes need an admin key (`maas keys create NAME "
             "--admin`; `/maas/v1/usage` also answers a named key its own usage). Errors: OIP and `/maas/v1` "
             "routes answer `{\"error\": \"...\"}`, OpenAI routes `{\"error\": {\"message\", \"type\", "
             "\"code\"}}`.", "", "| method | path | protocol | what | auth |", "|---|---|---|---|---|"]
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            auth = "open" if op.get("security") == [] else "key"
            parts.append(f"| {method.upper()} | `{path}` | {', '.join(op['tags'])} | {_cell(op['summary'])} | "
                         f"{auth} |")
    schemas = document["components"]["schemas"]
    parts += ["", "## Request bodies", ""]
    for name, schema in schemas.items():
        parts += [f"### `{name}`", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------------------- gRPC

_TYPES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string", 12: "bytes",
          13: "uint32", 6: "fixed64", 7: "fixed32", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64"}


def _message_rows(msg, prefix: str) -> list[str]:
    out = [f"### `{prefix}{msg.name}`", ""]
    out += ["| field | number | type |", "|---|---|---|"] if msg.field else ["*(no fields)*"]
    for f in msg.field:
        kind = f.type_name.rsplit(".", 1)[-1] if f.type_name else _TYPES.get(f.type, str(f.type))
        label = "repeated " if f.label == 3 else ""
        out.append(f"| `{f.name}` | {f.number} | {label}{kind} |")
    out.append("")
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            out += _message_rows(nested, f"{prefix}{msg.name}.")
    return out


def grpc_page() -> str:
    from google.protobuf import descriptor_pb2

    proto_dir = ROOT / "platform/maas/serve/protocols/oip/proto"
    fds = descriptor_pb2.FileDescriptorSet.FromString((proto_dir / "grpc_predict_v2.binpb").read_bytes())
    parts = ["# gRPC API", "", "The Open Inference Protocol v2 over gRPC, generated from the compiled descriptor "
             "set the server loads (`platform/maas/serve/protocols/oip/proto`). Port `deploy.grpc_port` (9000); "
             "API keys as "
             "`authorization: Bearer <key>` metadata; with several applications, name one in `application` "
             "metadata.", ""]
    for f in fds.file:
        for service in f.service:
            parts += [f"## Service `{f.package}.{service.name}`", "", "| method | request | response |",
                      "|---|---|---|"]
            parts += [f"| `{m.name}` | `{m.input_type.rsplit('.', 1)[-1]}` | `{m.output_type.rsplit('.', 1)[-1]}` |"
                      for m in service.method]
        parts += ["", "## Messages", ""]
        for msg in f.message_type:
            parts += _message_rows(msg, "")
    source = (proto_dir / "grpc_predict_v2.proto").read_text()
    parts += ["## The .proto", "", "```protobuf", source.rstrip(), "```", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ pages

def pages() -> dict[str, str]:
    from maas.serve.openapi import openapi_document

    document = openapi_document()
    out = spec_pages()
    out["reference/cli.md"] = cli_page()
    out["reference/http.md"] = http_page(document)
    out["reference/openapi.json"] = json.dumps(document, indent=2)
    out["reference/grpc.md"] = grpc_page()
    return out


def on_files(files, config: Any):  # mkdocs hook: add the generated pages to the site
    from mkdocs.structure.files import File

    for path, content in pages().items():
        files.append(File.generated(config, path, content=content))
    return files
