from pathlib import Path

import pytest

from maas.exceptions import SpecError
from maas.spec import EncoderPipelineSpec, PipelineSpec, apply_overrides, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"data": {"path": "d.parquet", "label": "y"}, "model": {"name": "m"}}


def test_every_example_spec_validates():
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    assert specs, "no example specs found"
    kinds = {load_spec(path).kind: load_spec(path) for path in specs}
    assert isinstance(kinds["classifier"], PipelineSpec) and isinstance(kinds["encoder"], EncoderPipelineSpec)
    assert kinds["lm"].model.arch == "llama"
    assert {load_spec(p).model.arch for p in specs if load_spec(p).kind == "classifier"} == {"mlp",
                                                                                           "minilm_classifier"}


def test_defaults_and_overrides_apply():
    spec = spec_from_dict(MINIMAL, ["train.epochs=3", "model.hidden_sizes=[8, 4]", "deploy.enabled=false"])
    assert spec.train.epochs == 3
    assert spec.model.hidden_sizes == [8, 4]
    assert spec.deploy.enabled is False
    assert spec.train.num_workers == 2  # default kept


def test_unknown_keys_get_did_you_mean_and_all_problems_reported_at_once():
    raw = {**MINIMAL, "trian": {}, "model": {"name": "m", "hiden_sizes": [3]},
           "train": {"epochs": 0, "batch_size": "many"}}
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    problems = dict(info.value.problems)
    assert "did you mean 'train'" in problems["trian"]
    assert "did you mean 'hidden_sizes'" in problems["model.hiden_sizes"]
    assert "train.epochs" in problems and "train.batch_size" in problems
    assert len(problems) == 4
    text = str(info.value)
    assert "4 problem(s)" in text and "train.epochs" in text


def test_missing_required_fields_are_named():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"data": {"path": "x"}})
    paths = [p for p, _ in info.value.problems]
    assert "data.label" in paths and "model" in paths


def test_split_must_sum_to_one():
    raw = {**MINIMAL, "data": {**MINIMAL["data"], "split": {"train": 0.8, "val": 0.15, "test": 0.15}}}
    with pytest.raises(SpecError, match="must be 1.0"):
        spec_from_dict(raw)


def test_bad_model_name_is_refused():
    with pytest.raises(SpecError, match="model.name"):
        spec_from_dict({**MINIMAL, "model": {"name": "Bad Name!"}})


def test_override_syntax_errors_are_clear():
    with pytest.raises(SpecError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(SpecError, match="not a mapping"):
        apply_overrides({"train": 3}, ["train.epochs=2"])


def test_spec_hash_is_stable_and_sensitive():
    a, b = spec_from_dict(MINIMAL), spec_from_dict(MINIMAL)
    assert a.spec_hash() == b.spec_hash()
    assert spec_from_dict(MINIMAL, ["train.epochs=7"]).spec_hash() != a.spec_hash()


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: classifier\ndata: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml line 3, column 1: not valid YAML: while parsing a flow sequence "
                                        r"\(from line 2, column 7\)"):
        load_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(bad)
    bad.write_text("\n# nothing yet\n")
    with pytest.raises(SpecError, match=r"bad.yaml is empty; a spec starts with its kind"):
        load_spec(bad)
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SpecError, match="is not a text file"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"is a folder; give a spec file in it"):
        load_spec(tmp_path)


def test_a_fine_tune_spec_refuses_a_shape_and_survives_the_sdks_round_trip():
    """A fine-tuned model keeps its base's shape: a spec naming one is refused by field. The SDK sends specs to
    jobs as ``model_dump`` JSON, where every field is set (the unused shape fields at their defaults): that
    payload must validate to the same spec (it was refused as 'model.n_layer' before)."""
    base = {"kind": "lm", "model": {"name": "support", "base": "llm@production", "finetune": "lora"},
            "data": {"source": "files", "path": "/tmp/t"}}
    with pytest.raises(SpecError, match="model.n_layer: a fine-tuned model keeps its base's shape"):
        spec_from_dict({**base, "model": {**base["model"], "n_layer": 4}})
    spec = spec_from_dict(base)
    again = spec_from_dict(spec.model_dump(mode="json"))
    assert again == spec and again.spec_hash() == spec.spec_hash()


def test_a_from_scratch_lm_spec_survives_the_sdks_round_trip_and_a_stray_finetune_is_refused():
    """A model trained from scratch has no base: its dumped spec (finetune and lora at their defaults) loads
    back (it was refused as 'model.finetune / model.lora need model.base'); a finetune set without a base is not."""
    spec = spec_from_dict({"kind": "lm", "model": {"name": "lm"}, "data": {"source": "files", "path": "/tmp/t"},
                           "eval": {"tasks": [{"name": "mc", "path": "/tmp/mc.jsonl", "type": "multiple_choice"}]}})
    again = spec_from_dict(spec.model_dump(mode="json"))
    assert again == spec and again.eval.tasks[0].name == "mc"
    with pytest.raises(SpecError, match="need model.base"):
        spec_from_dict({"kind": "lm", "model": {"name": "lm", "finetune": "lora"},
                        "data": {"source": "files", "path": "/tmp/t"}})
    with pytest.raises(SpecError, match="task names must be unique"):
        spec_from_dict({"kind": "lm", "model": {"name": "lm"}, "data": {"source": "files", "path": "/tmp/t"},
                        "eval": {"tasks": [{"name": "a", "path": "x", "type": "generate"}] * 2}})
