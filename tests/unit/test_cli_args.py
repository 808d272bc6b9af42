"""The `maas` command's argument handling, without Ray: parsing, overrides wherever they stand, the stage
guard before anything starts, and exit codes."""

import pytest

from maas.cli import build_parser, main
from maas.pipelines import STAGES


def test_submit_takes_every_stage_and_refuses_others_with_exit_2(capsys):
    parser = build_parser()
    for stage in STAGES:
        assert parser.parse_args(["submit", "examples/digits.yaml", "--stage", stage]).stage == stage
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["submit", "examples/digits.yaml", "--stage", "serve"])
    assert exit_.value.code == 2 and "invalid choice: 'serve'" in capsys.readouterr().err
    args = parser.parse_args(["submit", "examples/digits.yaml", "--async", "--serve", "--run-name", "nightly"])
    assert (args.async_, args.serve, args.run_name, args.verbose) == (True, True, "nightly", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["submit", "examples/digits.yaml", "--async", "--follow"])  # one or the other


def test_validate_takes_several_specs_and_set_overrides_and_refuses_unknown_arguments(capsys):
    # an override that breaks the spec is named by its field path
    assert main(["validate", "examples/digits.yaml", "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().out
    assert main(["validate", "examples/digits.yaml", "examples/gpt.yaml"]) == 0
    assert capsys.readouterr().out.count(": ok (model ") == 2
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "examples/digits.yaml", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_submitting_a_stage_the_kind_lacks_fails_before_any_ray_starts(capsys):
    code = main(["submit", "examples/gpt.yaml", "--stage", "preprocess", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "kind=lm spec runs as stage pipeline or deploy, not 'preprocess'" in err
    code = main(["submit", "examples/gpt.yaml", "--address", "http://127.0.0.1:9", "trian.epochs=1"])
    assert code == 2 and "trian" in capsys.readouterr().err  # the spec is checked before the cluster is called
