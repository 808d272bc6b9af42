"""Typed data ops and compression steps, and the filter grammar (a spec is data: no filter runs code)."""

import numpy as np
import pandas as pd
import pytest

from maas.exceptions import SpecError
from maas.spec import DedupeOp, DistillStep, FilterOp, FinalStep, ScaleOp, TokenizeOp, load_spec, spec_from_dict
from maas.spec.filter_expr import FilterSyntaxError, columns_of, evaluate_filter, parse_filter

BASE = {"data": {"path": "x.csv", "label": "y"}, "model": {"name": "m"}}


def _spec(ops):
    return spec_from_dict({**BASE, "data": {**BASE["data"], "ops": ops}})


def _problems(ops) -> dict:
    with pytest.raises(SpecError) as err:
        _spec(ops)
    return dict(err.value.problems)


def test_ops_parse_to_typed_models_and_dump_back_to_the_written_form():
    written = [{"filter": "age >= 0"}, {"dedupe": True}, {"dedupe": ["id"]},
               {"tokenize": {"column": "text", "max_length": 32}}, {"scale": {"minmax": ["a"]}}]
    spec = _spec(written)
    ops = spec.data.ops
    assert isinstance(ops[0], FilterOp) and ops[0].expr == "age >= 0"
    assert isinstance(ops[1], DedupeOp) and ops[1].keys is None and ops[2].keys == ["id"]
    assert isinstance(ops[3], TokenizeOp) and (ops[3].column, ops[3].max_length) == ("text", 32)
    assert spec.data.ops_of(ScaleOp)[0].plan() == {"a": "minmax"}
    dumped = spec.model_dump(mode="json")["data"]["ops"]
    assert dumped[:3] == written[:3] and dumped[3]["tokenize"]["max_length"] == 32
    again = spec_from_dict(spec.model_dump(mode="json"))
    assert again.spec_hash() == spec.spec_hash() and again.data.ops == spec.data.ops


def test_every_op_problem_is_reported_at_its_position():
    problems = _problems([{"fliter": "x > 1"}, {"select": "a"}, {"cast": {"a": "integer"}},
                          {"tokenize": {"col": "t"}}, {"custom": "not an import path"},
                          {"scale": {"standard": ["a"]}}, {"drop_null": ["a"]}])
    assert "did you mean 'filter'" in problems["data.ops[0]"]
    assert "valid list" in problems["data.ops[1].select"]
    assert "'float', 'int', 'string' or 'bool'" in problems["data.ops[2].cast.a"]
    assert "needs ['column']" in problems["data.ops[3].tokenize"] or "'col'" in problems["data.ops[3].tokenize"]
    assert "package.module:function" in problems["data.ops[4].custom"]
    late = _problems([{"scale": {"standard": ["a"]}}, {"drop_null": ["a"]}])
    assert "must come before scale/encode" in late["data.ops[1].drop_null"]


@pytest.mark.parametrize("expr, what", [
    ('@importlib.import_module("os").system("touch /tmp/pwned")', "'@'"),
    ('__import__("os").system("id")', "function call"),
    ("a.__class__ > 1", "attribute"),
    ("a.isna(1)", "function call"),
    ("a.b.isna()", "function call"),
    ("a[0] > 1", "subscript"),
    ("(lambda: 1)() > 0", "call"),
    ("[x for x in a]", "ListComp"),
    ("a if b else c", "IfExp"),
    ("a in b", "'in' with something other than a list"),
    ("a is 3", "'is' with something other than null"),
    ("a > ", "not an expression"),
    ("x := 1", "not an expression"),
    # bounded: these hung, filled the memory or overflowed the stack (a RecursionError escaped validation)
    ("a < 10**10**7", "an exponent other than a number of at most 64"),
    ("a < 9**9**9", "an exponent other than a number of at most 64"),
    ("'a' * 10**12 == a", "arithmetic on a string"),
    ("a < 99999999999999999999999", "past 64 bits"),
    ("not " * 2000 + "a", "nests at most 64 levels"),
    ("a > 0 or " * 2000 + "a > 1", "at most 10000 characters"),
])
def test_a_filter_outside_the_grammar_is_refused_at_validation_naming_the_part(expr, what):
    problems = _problems([{"select": ["a"]}, {"filter": expr}])
    assert what in problems["data.ops[1].filter"], problems
    with pytest.raises(FilterSyntaxError):
        parse_filter(expr)


def test_filters_evaluate_like_pandas_with_nulls_comparing_false():
    df = pd.DataFrame({"age": [10, -1, 50, None, 30], "income": [1e3, 2e3, 2e7, 5e3, None],
                       "city": ["a", "b", "a", None, "c"], "my col": [1, 2, 3, 4, 5]})
    cases = {
        "age >= 0 and income < 1e7": [True, False, False, False, False],
        "age >= 0 & (income < 1e7)": [True, False, False, False, False],
        "not (age > 20) or city == 'c'": [True, True, False, True, True],
        "city in ['a', 'c']": [True, False, True, False, True],
        "city not in ['a']": [False, True, False, False, True],
        "age is null or income is None": [False, False, False, True, True],
        "notnull(city) and `my col` % 2 == 1": [True, False, True, False, True],
        "age.isna() or age >= 18": [False, False, True, True, True],
        "0 <= age < 40": [True, False, False, False, True],
        "age * 2 + 1 > 40 and -age < 0": [False, False, True, False, True],
        "~(city == 'a')": [False, True, False, True, True],
        "age != 10": [False, True, True, False, True],
    }
    for expr, expected in cases.items():
        tree = parse_filter(expr)
        assert evaluate_filter(tree, df).tolist() == expected, expr
    assert columns_of(parse_filter("notnull(city) and `my col` > age")) == {"city", "my col", "age"}
    # where pandas agrees (no nulls involved), the results are pandas' own
    full = df.dropna()
    for expr in ("age >= 0 and income < 1e7", "city in ['a', 'c']", "0 <= age < 40"):
        assert evaluate_filter(parse_filter(expr), full).tolist() == full.eval(expr).tolist()


def test_encoder_steps_are_typed_with_their_defaults():
    spec = load_spec("examples/minilm.yaml")
    student = next(v for v in spec.compress.variants if v.name == "student_l3_int8")
    distill, final = student.steps
    assert isinstance(distill, DistillStep) and distill.layers == [1, 3, 5] and distill.num_workers == 1
    assert isinstance(final, FinalStep) and student.final == "onnx_int8" and student.model_steps == [distill]
    shorthand = spec_from_dict({"kind": "encoder", "model": {"name": "e"}, "compress": {"variants": ["bf16"]}})
    (variant,) = shorthand.compress.variants
    assert variant.name == "bf16" and variant.final == "bf16" and variant.model_steps == []
    assert np.isclose(spec_from_dict(spec.model_dump(mode="json")).compress.variants[-1].steps[0].learning_rate,
                      distill.learning_rate)
