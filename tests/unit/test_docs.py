"""The documentation site: the reference is generated from the code and complete (every spec field, every CLI
command, every route, every gRPC method), every page is in the navigation, and the README fits on a screen.
`make docs` builds the site strictly (a broken link, anchor or missing page fails the build) before the tests."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _reference():
    """docs/hooks/reference.py (not a package module), loaded once."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(model, seen=None) -> set[tuple[str, str]]:
    """(model name, field) for every field of ``model`` and of every model under it."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    out = set()
    for name, field in model.model_fields.items():
        out.add((model.__name__, name))
        for sub in _reference()._models_in(field.annotation):
            out |= _fields(sub, seen)
    return out


def _documented(pages: dict) -> set[tuple[str, str]]:
    """(model name, field) rows of the generated spec pages: a field row under the *Model* line of its section."""
    rows, model = set(), None
    for path, text in pages.items():
        if not path.startswith("reference/spec/"):
            continue
        for line in text.splitlines():
            if m := re.match(r"\*(\w+)\*", line):
                model = m[1]
            elif m := re.match(r"\| `(\w+)` \|", line):
                rows.add((model, m[1]))
    return rows


def test_every_field_of_every_kind_is_in_the_generated_reference_with_its_default_and_description():
    from maas.spec import SPEC_CLASSES

    pages = _reference().pages()
    expected = set().union(*(_fields(cls) for cls in SPEC_CLASSES.values()))
    assert expected - _documented(pages) == set()
    shared = pages["reference/spec/shared.md"]
    assert "| `kv_cache_gib` | float | `1.0` | KV cache size on CPU" in shared  # type, default, description
    assert "| `alias` | str | `\"production\"` |" in shared


def test_a_field_added_to_a_spec_shows_up_with_no_doc_edit(monkeypatch):
    from pydantic import Field, create_model

    from maas.spec.common import DeploySpec

    grown = create_model("DeploySpec", __base__=DeploySpec,
                         brand_new=(int, Field(7, description="A field no page mentions.")))
    monkeypatch.setattr("maas.spec.common.DeploySpec", grown)
    text = _reference().spec_pages()["reference/spec/shared.md"]
    assert "| `brand_new` | int | `7` | A field no page mentions. |" in text


def test_every_cli_command_route_and_grpc_method_is_in_the_reference():
    from google.protobuf import descriptor_pb2

    from maas.cli import build_parser, subcommands
    from maas.serve.openapi import openapi_document

    pages = _reference().pages()
    cli = pages["reference/cli.md"]

    def commands(parser, name):
        yield name
        for sub_name, sub in subcommands(parser).items():
            yield from commands(sub, f"{name} {sub_name}")

    for command in commands(build_parser(), "maas"):
        assert f"`{command}`" in cli, command
    for path, ops in openapi_document()["paths"].items():
        for method in ops:
            assert f"| {method.upper()} | `{path}` |" in pages["reference/http.md"], (method, path)
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "platform/maas/serve/protocols/oip/proto/grpc_predict_v2.binpb").read_bytes())
    methods = [m.name for f in fds.file for s in f.service for m in s.method]
    assert methods and all(f"| `{m}` |" in pages["reference/grpc.md"] for m in methods)


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return [p for item in node for p in _nav_pages(item)]


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    nav = set(_nav_pages(config["nav"]))
    written = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    generated = {p for p in _reference().pages() if p.endswith(".md")}
    assert written - nav == set()  # no orphan page
    assert nav - written - generated == set()  # no entry without a page


def test_the_readme_fits_on_a_screen_and_links_into_the_site():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), target
    assert "make run" in readme and "make test" in readme


def test_the_getting_started_pages_mark_every_block_they_do_not_run_with_a_reason():
    for page in (ROOT / "docs" / "getting-started").glob("*.md"):
        for directive in re.findall(r"<!-- snippet: ([^\n]*?) -->", page.read_text()):
            assert re.fullmatch(r"skip \S.{8,}|background, ready when \"[^\"]+\"", directive), (page.name, directive)



def test_every_page_closes_its_code_fences():
    """A stray fence turns the rest of a page inside out (prose as code, code as prose) without failing the build."""
    for page in (ROOT / "docs").rglob("*.md"):
        fences = [line for line in page.read_text().splitlines() if line.lstrip().startswith("```")]
        assert len(fences) % 2 == 0, page
