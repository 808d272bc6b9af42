"""`maas spec explain` / `maas spec schema` and the SDK calls under them: read from the spec models themselves."""

from __future__ import annotations

import json

import pytest
import yaml

from maas.cli import main
from maas.exceptions import SpecError
from maas.spec import SPEC_CLASSES, spec_from_dict
from maas.spec.explain import explain, spec_schema
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_a_field_is_explained_for_every_kind_that_has_it_with_its_own_default():
    docs = {d.kind: d for d in explain("train.learning_rate")}
    assert set(docs) == {"classifier", "lm"}  # the kinds with a train section
    # each kind's own default: the lm kind's train section brings its own learning rate
    for kind, doc in docs.items():
        assert doc.default == spec_from_dict(_minimal(kind)).train.learning_rate
    assert docs["lm"].default != docs["classifier"].default
    assert docs["lm"].type == "float" and docs["lm"].bounds == ["> 0"] and "AdamW" in docs["lm"].description


def test_a_section_lists_its_fields_and_paths_walk_into_list_items():
    (tasks,) = explain("eval.tasks", kind="lm")
    assert tasks.type == "list[section]" and tasks.bounds == ["at most 32 long"]
    assert [f[0] for f in tasks.fields][:3] == ["name", "path", "type"]
    (kind_of_task,) = explain("eval.tasks.type", kind="lm")
    assert kind_of_task.required and kind_of_task.type == 'one of "multiple_choice", "generate", "lm_eval"'
    (top,) = explain("", kind="llm")
    assert [f[0] for f in top.fields] == list(SPEC_CLASSES["llm"].model_fields)


def test_unknown_paths_and_kinds_are_refused_with_the_closest_name():
    with pytest.raises(SpecError, match="did you mean 'train'"):
        explain("trian.epochs")
    with pytest.raises(SpecError, match="deploy.llm.max_tokens is of type int, not a section"):
        explain("deploy.llm.max_tokens.x", kind="lm")
    with pytest.raises(SpecError, match="unknown kind 'gan'"):
        explain("train", kind="gan")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_schema_accepts_every_example_and_refuses_an_unknown_key(example):
    jsonschema = pytest.importorskip("jsonschema")
    spec = yaml.safe_load(example.read_text())
    kind = spec.get("kind", "classifier")
    jsonschema.validate(spec, spec_schema(kind))
    jsonschema.validate(spec, spec_schema())  # any kind's
    with pytest.raises(jsonschema.ValidationError, match="trian"):
        jsonschema.validate({**spec, "trian": {}}, spec_schema(kind))


def test_the_cli_prints_each_kind_once_and_json_on_request(capsys):
    assert main(["spec", "explain", "deploy.llm.max_tokens"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deploy.llm.max_tokens  (classifier, encoder, lm, llm)") and "default: 4096" in out
    assert main(["spec", "explain", "train.epochs", "--kind", "lm", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "lm" and doc["default"] == SPEC_CLASSES["lm"].model_fields["train"].get_default(
        call_default_factory=True).epochs
    assert main(["spec", "schema", "llm"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "LLMPipelineSpec"
    assert main(["spec", "explain", "trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def _minimal(kind: str) -> dict:
    spec = yaml.safe_load((ROOT / "examples" / {"classifier": "digits.yaml", "encoder": "minilm.yaml",
                                                   "lm": "lm.yaml", "llm": "llm.yaml"}[kind]).read_text())
    return {k: v for k, v in spec.items() if k != "train"}  # the kind's own train defaults
