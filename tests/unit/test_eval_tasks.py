"""Task files for lm-evaluation-harness (maas.eval.tasks): what a malformed line is told, and the lm-eval
configuration a task becomes (plain data: no code, templates that only read the line's fields). The runs
themselves, through a served engine and in-process, are in tests/integration/test_llm_serving.py."""

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from maas.eval.tasks import EvalError, read_task_file, task_config
from maas.spec.evaluation import EvalTaskSpec


def _task(tmp_path, lines, **kw):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    return EvalTaskSpec(name="t", path=str(path), **{"type": "multiple_choice", **kw})


@pytest.mark.parametrize("line, said", [
    ("{not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: each line must be a JSON object"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "'choices' must be a list of at least two"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "'answer' 2 is not an index of 'choices' (0..1)"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "'answer' must be the index"),
    ({"choices": ["a", "b"], "answer": 0}, "'question' must be a string"),
])
def test_a_malformed_multiple_choice_line_is_named_with_its_file_line_and_field(tmp_path, line, said):
    good = {"question": "q", "choices": ["a", "b"], "answer": 1}
    task = _task(tmp_path, [good, line])
    with pytest.raises(EvalError, match="eval task t: .*t.jsonl") as err:
        read_task_file(task, tmp_path)
    assert said in str(err.value)


def test_generate_lines_need_a_prompt_and_an_answer_and_limit_keeps_the_first_lines(tmp_path):
    with pytest.raises(EvalError, match="line 1: 'answer' must be a string"):
        read_task_file(_task(tmp_path, [{"prompt": "p", "answer": 3}], type="generate"), tmp_path / "..")
    task = _task(tmp_path, [{"prompt": f"p{i}", "answer": "a"} for i in range(5)] + ["{broken"], type="generate",
                 limit=3)
    out = tmp_path / "out"
    out.mkdir()
    path, data = read_task_file(task, out)  # the broken sixth line is past the limit
    assert [json.loads(x)["prompt"] for x in path.read_text().splitlines()] == ["p0", "p1", "p2"]
    assert data == path.read_bytes()
    with pytest.raises(EvalError, match="cannot read"):
        read_task_file(EvalTaskSpec(name="t", path=str(tmp_path / "missing.jsonl"), type="generate"), out)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EvalError, match="has no lines"):
        read_task_file(EvalTaskSpec(name="t", path=str(tmp_path / "empty.jsonl"), type="generate"), out)


def test_a_task_spec_refuses_what_it_cannot_score():
    with pytest.raises(ValidationError, match="match: regex needs a pattern"):
        EvalTaskSpec(name="t", path="x", type="generate", match="regex")
    with pytest.raises(ValidationError, match="not a regular expression"):
        EvalTaskSpec(name="t", path="x", type="generate", match="regex", pattern="(")
    with pytest.raises(ValidationError, match="generate tasks only"):
        EvalTaskSpec(name="t", path="x", type="multiple_choice", match="regex", pattern="a")
    with pytest.raises(ValidationError, match="name"):
        EvalTaskSpec(name="Bad Name", path="x", type="generate")
    with pytest.raises(ValidationError, match="extra"):
        EvalTaskSpec(name="t", path="x", type="generate", process_results="!function x.y")


def test_the_lm_eval_configuration_is_data_reading_only_the_lines_fields(tmp_path):
    mc = task_config(EvalTaskSpec(name="mc", path="x", type="multiple_choice"), tmp_path / "mc.jsonl")
    assert mc["output_type"] == "multiple_choice" and mc["task"] == "maas_mc"
    assert (mc["doc_to_text"], mc["doc_to_choice"], mc["doc_to_target"]) == ("{{question}}", "{{choices}}",
                                                                              "{{answer}}")
    assert mc["dataset_kwargs"] == {"data_files": {"test": str(tmp_path / "mc.jsonl")}}
    gen = task_config(EvalTaskSpec(name="g", path="x", type="generate", match="regex", pattern=r"(\d+)",
                                   max_tokens=8, stop=["\n", "."]), tmp_path / "g.jsonl")
    assert gen["generation_kwargs"] == {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False,
                                        "temperature": 0.0}
    assert gen["filter_list"][0]["filter"][0] == {"function": "regex", "regex_pattern": r"(\d+)",
                                                  "group_select": 0, "fallback": ""}
    text = json.dumps([mc, gen])
    assert "!function" not in text and "custom" not in text



def test_the_cloze_task_is_made_from_held_out_lines_the_same_way_every_time(tmp_path):
    from maas.eval.tasks import cloze_task

    lines = ["the cat sat on the mat", "a dog ran to the park today", "short line", "birds sing in the early morning"]
    task = cloze_task(lines, str(tmp_path))
    assert (task.name, task.type, task.path) == ("cloze", "multiple_choice", f"{tmp_path}/cloze.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "cloze.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["the cat sat", "a dog ran", "birds sing in"]  # cut before the middle word
    assert [r["choices"][r["answer"]] for r in rows] == ["on", "to", "the"]
    assert all(len(set(r["choices"])) == 4 for r in rows)  # the word and 3 others of the text
    first = (tmp_path / "cloze.jsonl").read_bytes()
    cloze_task(lines, str(tmp_path))
    assert (tmp_path / "cloze.jsonl").read_bytes() == first  # seeded: the champion reads the same task
    read_task_file(task, tmp_path / "..")  # a valid task file
    with pytest.raises(EvalError, match="too short for a cloze task"):
        cloze_task(["two words"], str(tmp_path))


def test_a_contains_match_counts_the_answer_anywhere_in_the_continuation():
    """Scored from the harness's own samples, so the lm-eval configuration stays data."""
    from maas.eval.tasks import _score, task_config

    task = EvalTaskSpec(name="g", path="x", type="generate", match="contains")
    samples = [{"doc_id": 1, "target": "Paris", "filtered_resps": ["It is Paris, of course"]},
               {"doc_id": 0, "target": " 42 ", "filtered_resps": ["the answer: 41"]},
               {"doc_id": 2, "target": "blue", "filtered_resps": "Blue"}]  # case matters, as in exact
    out = {"samples": {"maas_g": samples}, "results": {"maas_g": {"exact_match,none": 0.0}}}
    score = _score(task, out, "h", task_config(task, Path("g.jsonl")))
    assert (score.metric, score.score, score.items) == ("contains", 1 / 3, 3)
    assert score.answers == ["the answer: 41", "It is Paris, of course", "Blue"]  # in line order
    json.dumps(task_config(task, Path("g.jsonl")))  # data, nothing callable


HARNESS_TASK = """task: capitals
dataset_path: json
dataset_kwargs:
  data_files: {test: items.jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
"""


def test_a_harness_task_yaml_runs_only_as_data(tmp_path):
    """An lm-eval task YAML is loaded with safe_load and kept only if it is data: no code, no downloads."""
    from maas.eval.harness_yaml import load_harness_task

    (tmp_path / "items.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    (tmp_path / "task.yaml").write_text(HARNESS_TASK)
    out = tmp_path / "run"
    out.mkdir()
    config, defining = load_harness_task("caps", str(tmp_path / "task.yaml"), out)
    assert config["task"] == "maas_caps" and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"] == {"test": str(out / "caps-test.jsonl")}
    assert (out / "caps-test.jsonl").read_bytes() in defining  # the data is part of the task's hash
    json.dumps(config)

    (tmp_path / "bad.yaml").write_text(HARNESS_TASK.replace('"{{question}}"', "!function utils.doc_to_text"))
    with pytest.raises(EvalError, match=r"bad.yaml line 7: !function tags run Python"):
        load_harness_task("bad", str(tmp_path / "bad.yaml"), out)
    base = yaml.safe_load(HARNESS_TASK)
    refused = [
        ({"process_results": "x"}, "'process_results' runs code"),
        ({"include": "other.yaml"}, "'include' runs code or reads other files"),
        ({"doc_to_text": "{{ question.__class__.__mro__ }}"}, "a template may only name the line's fields"),
        ({"doc_to_text": "{{ question | upper }}"}, "a template may only name the line's fields"),
        ({"doc_to_text": "{% for c in choices %}{{c}}{% endfor %}"}, "a template may only name the line's fields"),
        ({"dataset_path": "cais/mmlu"}, "dataset_path must be one of csv, json, parquet"),
        ({"metric_list": [{"metric": "bleu"}]}, "metric_list must name metrics maas runs"),
        ({"filter_list": [{"name": "x", "filter": [{"function": "custom"}]}]}, "maas runs the harness's"),
        ({"output_type": "loglikelihood_rolling"}, "output_type must be one of"),
        ({"dataset_kwargs": {"data_files": {"test": "../../etc/passwd"}}}, "must be a file name beside the YAML"),
        ({"trust_remote_code": True}, "unknown key 'trust_remote_code'"),
    ]
    for override, message in refused:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**base, **override}))
        with pytest.raises(EvalError, match=re.escape(message)):
            load_harness_task("bad", str(tmp_path / "bad.yaml"), out)
    with pytest.raises(ValidationError, match="limit applies to JSON Lines tasks"):
        EvalTaskSpec(name="t", path="x.yaml", type="lm_eval", limit=3)
