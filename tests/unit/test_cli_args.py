"""The `maas` command's argument handling, without Ray: parsing, overrides wherever they stand, the stage
guard before anything starts, and exit codes."""

import pytest

from maas.cli import build_parser, main
from maas.pipelines import STAGES
from tests.conftest import ROOT


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
    assert main(["validate", "examples/digits.yaml", "examples/lm.yaml"]) == 0
    assert capsys.readouterr().out.count(": ok (model ") == 2
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "examples/digits.yaml", "--bogus"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_submitting_a_stage_the_kind_lacks_fails_before_any_ray_starts(capsys):
    code = main(["submit", "examples/lm.yaml", "--stage", "preprocess", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "kind=lm spec runs as stage pipeline or compress or deploy, not 'preprocess'" in err
    code = main(["submit", "examples/lm.yaml", "--address", "http://127.0.0.1:9", "trian.epochs=1"])
    assert code == 2 and "trian" in capsys.readouterr().err  # the spec is checked before the cluster is called


def test_serve_settings_that_cannot_hold_are_refused_by_field_before_any_ray_starts(capsys, monkeypatch):
    import ray

    monkeypatch.setattr("maas.runtime.ensure_ray", lambda *a, **k: pytest.fail("Ray started for a bad setting"))
    code = main(["serve", "digits@production", "--proxy", "default"])  # gRPC on, host 127.0.0.1
    err = capsys.readouterr().err
    assert code == 2 and "deploy.proxy 'default' with deploy.grpc_port 9000" in err and "deploy.grpc_port: 0" in err
    assert main(["serve", "digits@production", "--canary", "candidate:lots"]) == 2
    assert "deploy.canary.percent" in capsys.readouterr().err and not ray.is_initialized()


def test_the_ray_token_never_goes_in_clear_text_to_another_machine(capsys, monkeypatch):
    from maas.exceptions import JobError
    from maas.submit import Client

    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cr3t-token")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("MAAS_INSECURE", raising=False)
    for remote in ("http://10.1.2.3:8265", "10.1.2.3:8265", "http://head.example.com:8265"):
        with pytest.raises(JobError, match=r"refusing to send the Ray auth token in clear text.*--insecure"):
            Client(remote)
    for cmd in (["jobs"], ["status", "raysubmit_1"], ["logs", "raysubmit_1"], ["stop", "raysubmit_1"],
                ["submit", "examples/digits.yaml"]):
        assert main([*cmd, "--address", "http://10.1.2.3:8265"]) != 0
        err = capsys.readouterr().err
        assert "clear text" in err and "https://" in err and "127.0.0.1:8265" in err, err
    # this machine (a forwarded port) and https are fine: these fail only because nothing listens there
    for address in ("http://127.0.0.1:9", "http://localhost:9", "https://127.0.0.1:9"):
        with pytest.raises(JobError, match="cannot reach"):
            Client(address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token is sent at all: nothing to protect
    with pytest.raises(JobError, match="cannot reach"):
        Client("http://127.0.0.2:9")


def test_models_alias_shows_history_moves_with_expect_and_gc_keeps_young_uploads(tmp_path, capsys):
    from maas.registry import Registry

    store = str(tmp_path / "store")
    reg = Registry(store)
    (tmp_path / "a.bin").write_bytes(b"1")
    for _ in range(3):
        reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch")
    assert main(["models", "alias", "m", "production", "1", "--store", store]) == 0
    assert "m@production: - -> 1" in capsys.readouterr().out
    assert main(["models", "alias", "m", "production", "2", "--expect", "3", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "points at 1, not 3" in err and "--expect 1" in err
    assert main(["models", "alias", "m", "production", "2", "--expect", "1", "--store", store]) == 0
    assert main(["models", "alias", "m", "production", "--delete", "--store", store]) == 0
    capsys.readouterr()
    assert main(["models", "alias", "m", "--store", store]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "production" in line]
    assert [r[2:5] for r in rows] == [["production", "-", "1"], ["production", "1", "2"],
                                      ["production", "2", "(removed)"]]
    assert all(r[5].startswith("cli:") for r in rows)  # when (date, time), alias, from, to, by
    assert main(["models", "alias", "m", "../versions/2/manifest", "--delete", "--store", store]) == 2
    assert "invalid alias" in capsys.readouterr().err and len(reg.list_versions("m")) == 3
    with pytest.raises(Exception, match="stopped before committing"):  # a killed publisher's uploads
        reg.publish("m", {"a.bin": tmp_path / "a.bin", "b.bin": tmp_path / "a.bin"}, runtime="torch",
                    _stop_after_files=1)
    assert main(["models", "gc", "--store", store]) == 0 and "removed 0 upload(s)" in capsys.readouterr().out
    assert main(["models", "gc", "--grace-s", "0", "--store", store]) == 0  # its lease is still fresh
    assert "removed 0 upload(s)" in capsys.readouterr().out
    assert main(["models", "gc", "--grace-s", "0", "--lease-s", "0", "--store", store]) == 0
    assert "removed 1 upload(s)" in capsys.readouterr().out and len(reg.list_versions("m")) == 3


def test_a_candidate_takes_an_alias_only_forced_with_a_reason_which_the_history_keeps(tmp_path, capsys):
    from maas.registry import Registry

    store = str(tmp_path / "store")
    reg = Registry(store)
    (tmp_path / "a.bin").write_bytes(b"1")
    reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch")
    reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch", status="candidate",
                description="0.9100 is 6.00 points below champion m/1's 0.9700 on the same rows")
    reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch", status="rejected", description="too lossy")
    assert main(["models", "alias", "m", "production", "1", "--store", store]) == 0
    assert main(["models", "alias", "m", "production", "2", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "m/2 is a candidate" in err and "below champion m/1" in err and "--force --reason" in err
    assert main(["models", "alias", "m", "production", "2", "--force", "--store", store]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert reg.aliases("m") == {"production": 1}  # nothing moved
    assert main(["models", "alias", "m", "production", "2", "--force", "--reason", "the new data set is harder",
                 "--store", store]) == 0
    assert main(["models", "alias", "m", "production", "3", "--force", "--reason", "no", "--store", store]) == 2
    assert "'rejected' and cannot take alias" in capsys.readouterr().err  # a failed gate is never forced
    assert reg.aliases("m") == {"production": 2}
    assert reg.alias_history("m")[-1]["reason"] == "the new data set is harder"
    assert main(["models", "alias", "m", "--store", store]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("the new data set is harder")


def test_models_compare_puts_versions_side_by_side_with_their_status_and_why(tmp_path, capsys):
    from maas.registry import Registry

    store = str(tmp_path / "store")
    reg = Registry(store)
    (tmp_path / "a.bin").write_bytes(b"12")
    reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch", metrics={"test_accuracy": 0.97, "rows": 12345,
                                                                              "rows_min": 1, "rows_max": 2})
    reg.publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="onnxruntime", status="candidate",
                description="below champion m/1", metrics={"test_accuracy": 0.91}, lineage={"parent": "m/1"})
    reg.set_alias("m", "production", 1)
    assert main(["models", "compare", "m@production", "m/2", "--store", store]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["status"] == ["ready", "candidate"] and rows["aliases"] == ["production", "-"]
    assert rows["test_accuracy"] == ["0.97", "0.91"] and rows["rows"] == ["12,345"]  # m/2 has no such figure
    assert rows["parent"] == ["-", "m/1"] and "rows_min" not in rows
    assert rows["m/2:"] == ["below", "champion", "m/1"]
    assert main(["models", "compare", "m/9", "--store", store]) == 2 and "no version 9" in capsys.readouterr().err


def test_validate_takes_key_value_overrides_after_the_specs_like_run_and_submit(capsys):
    assert main(["validate", "examples/digits.yaml", "train.epochs=abc"]) == 2  # was: 'spec file not found'
    out = capsys.readouterr().out
    assert "train.epochs: Input should be a valid integer" in out and "not found" not in out
    assert main(["validate", "examples/digits.yaml", "examples/lm.yaml", "train.epochs=3"]) == 0
    assert capsys.readouterr().out.count(": ok (model ") == 2


def test_version_and_models_without_a_subcommand_print_and_exit_0(capsys):
    from maas.version import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"maas {__version__}"
    assert main(["models"]) == 0
    assert "{list,show,compare,alias,delete,import,gc}" in capsys.readouterr().out


def test_a_reader_that_went_away_is_no_error(tmp_path):
    """`maas models list | head -1`: the pipe closes before maas writes; no BrokenPipeError traceback, exit 0."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "maas"), "models", "list", "--store", str(tmp_path)],
                              stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()[-2000:]


def test_models_list_filters_and_sorts_show_summarises_and_delete_refuses_an_aliased_version(tmp_path, capsys):
    import json

    from maas.registry import Registry

    store = str(tmp_path / "store")
    reg = Registry(store)
    (tmp_path / "a.bin").write_bytes(b"1" * 2048)
    files = {"a.bin": tmp_path / "a.bin"}
    feats = [f"f{i}" for i in range(64)]
    reg.publish("m", files, runtime="torch", metrics={"test_accuracy": 0.95, "train_loss": [0.9, 0.5, 0.25]},
                lineage={"method": "fp32", "parent": None, "features": feats, "data_counts": {
                    "rows_in": 100, "rows_ok": 98, "rows_rejected": 2, "splits": {"train": 80, "test": 18}}},
                signature={"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], "features": feats})
    reg.publish("m", files, runtime="onnxruntime", metrics={"test_accuracy": 0.96},
                lineage={"method": "int8", "parent": "m/1", "gate": {"passed": True, "reason": "within 1 point"}},
                description="within 1 point")
    reg.publish("m", files, runtime="onnxruntime", metrics={"test_accuracy": 0.5}, status="rejected",
                lineage={"method": "prune", "parent": "m/1", "gate": {"passed": False, "reason": "drop 45 points"}})
    reg.publish("other", files, runtime="torch")
    reg.set_alias("m", "production", 2)

    def listed(*args) -> list[str]:
        capsys.readouterr()
        assert main(["models", "list", *args, "--json", "--store", store]) == 0
        return [v["ref"] for v in json.loads(capsys.readouterr().out)]

    assert listed() == ["m/1", "m/2", "m/3", "other/1"] and listed("m", "--status", "ready") == ["m/1", "m/2"]
    assert listed("--sort", "test_accuracy", "--reverse", "--limit", "2") == ["m/2", "m/1"]
    assert listed("--sort", "test_accuracy") == ["m/3", "m/1", "m/2", "other/1"]  # without the metric: last
    assert listed("--alias", "production") == ["m/2"] and listed("--sort", "created", "--reverse")[0] == "other/1"
    assert main(["models", "list", "--sort", "acc", "--store", store]) == 2
    assert "cannot sort by 'acc'" in (err := capsys.readouterr().err) and "test_accuracy" in err
    assert main(["models", "list", "m", "--store", store]) == 0
    table = capsys.readouterr().out
    assert [line.split()[:3] for line in table.splitlines()[2:]] == [
        ["m/1", "ready", "fp32"], ["m/2", "ready", "int8"], ["m/3", "rejected", "prune"]]
    assert "test_accuracy 0.96" in table and "FAIL" in table and "production" in table

    assert main(["models", "show", "m/1", "--store", store]) == 0
    shown = capsys.readouterr().out
    assert "train_loss               3 values, last 0.25" in shown
    assert "splits                   train 80 / test 18" in shown
    assert "features                 64" in shown and shown.count("f63") == 0  # a count, not 64 names twice
    assert main(["models", "show", "m@production", "--store", store]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("m/2  ready  (production)") and "gate       passed: within 1 point" in shown
    assert main(["models", "show", "m@production", "--json", "--store", store]) == 0
    assert json.loads(capsys.readouterr().out)["lineage"]["parent"] == "m/1"  # the whole manifest

    assert main(["models", "delete", "m/2", "--store", store]) == 2 and "m@production points at" in \
        capsys.readouterr().err
    assert main(["models", "delete", "m", "--store", store]) == 2 and "as name/version" in capsys.readouterr().err
    assert main(["models", "delete", "m/3", "--reason", "bad gate", "--store", store]) == 0
    assert "never reused" in capsys.readouterr().out and listed("m") == ["m/1", "m/2"]
    assert main(["models", "show", "m/3", "--store", store]) == 2 and "m/3 was deleted" in capsys.readouterr().err
    assert main(["models", "alias", "ghost", "--store", store]) == 2 and "no model named 'ghost'" in \
        capsys.readouterr().err
    assert main(["models", "list", "--store", str(tmp_path / "nowhere")]) == 2
    assert "no registry at" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_the_default_store_is_maas_store_else_the_nearest_maas_folder_up_from_here(tmp_path, monkeypatch, capsys):
    """`maas models list` in a project's sub-folder reads the project's store, not an empty ./.maas."""
    from maas.cli import default_store
    from maas.registry import Registry

    (tmp_path / "a.bin").write_bytes(b"1")
    Registry(str(tmp_path / "proj" / ".maas")).publish("m", {"a.bin": tmp_path / "a.bin"}, runtime="torch")
    deep = tmp_path / "proj" / "notebooks" / "drafts"
    deep.mkdir(parents=True)
    monkeypatch.delenv("MAAS_STORE", raising=False)
    monkeypatch.chdir(deep)
    assert default_store() == str(tmp_path / "proj" / ".maas")
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0  # the parser's default: found from here
    assert [v["ref"] for v in __import__("json").loads(capsys.readouterr().out)] == ["m/1"]
    monkeypatch.chdir(tmp_path / "proj")
    assert default_store() == ".maas"
    monkeypatch.chdir(tmp_path)
    assert default_store() == ".maas"  # none here or above (a fresh project: where `maas run` publishes)
    monkeypatch.setenv("MAAS_STORE", "s3://bucket/maas")
    monkeypatch.chdir(deep)
    assert default_store() == "s3://bucket/maas"


def test_every_command_has_an_example_and_every_argument_its_help():
    """`maas <cmd> --help` tells a newcomer what each argument is and shows one command that works."""
    import argparse

    from maas.cli import build_parser, subcommands

    def leaves(parser, name):
        subs = subcommands(parser)
        return [(name, parser)] if not subs else [x for n, p in subs.items() for x in leaves(p, f"{name} {n}")]

    found = leaves(build_parser(), "maas")
    assert len(found) >= 20
    for name, parser in found:
        assert "Example: maas " in (parser.description or ""), name
        silent = [a.dest for a in parser._actions if not a.help and not isinstance(a, argparse._HelpAction)]
        assert not silent, (name, silent)
        addresses = {a.help for a in parser._actions if "--address" in a.option_strings}
        assert all(h.startswith(("Ray cluster to run on", "the cluster's Jobs API")) for h in addresses), name


def test_validate_checks_what_a_spec_reads_without_ray(tmp_path, monkeypatch, capsys, s3_bucket):
    """Local files, folders and globs; object storage when this machine has credentials for it (else a note);
    a store that cannot be written; a path data.bootstrap will write is a note, not a problem."""
    digits, llm, lm = (str(ROOT / "examples" / f"{n}.yaml") for n in ("digits", "llm", "lm"))
    (tmp_path / "afile").write_text("x")

    def validate(*args) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["validate", *args])
        return code, capsys.readouterr().out

    code, out = validate(digits, f"data.path={tmp_path}/new/digits.parquet")
    assert code == 0 and "note: data.path: " in out and "data.bootstrap writes it on the first run" in out
    code, out = validate(digits, "data.bootstrap=null", f"data.path={tmp_path}/missing.parquet",
                         f"store={tmp_path}/afile/store")
    assert code == 2 and "- data.path: " in out and "missing.parquet does not exist" in out
    assert "- store: " in out and "is a file, not a folder" in out
    code, out = validate(lm, "data.source=files", f"data.path={tmp_path}/*.txt")
    assert code == 2 and "no data files match" in out
    code, out = validate(llm, f"model.source={tmp_path}")
    assert code == 2 and "holds no config.json" in out
    code, out = validate(digits, "data.bootstrap=null", f"data.path={s3_bucket}/none.parquet")
    assert code == 2 and "none.parquet does not exist" in out  # credentials here: checked in the bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials either
    code, out = validate(digits, "data.bootstrap=null", f"data.path={s3_bucket}/none.parquet")
    assert code == 0 and "not checked here (no s3 credentials on this machine)" in out


def test_bash_completion_from_the_parser_completes_commands_options_choices_and_spec_files(tmp_path, capsys):
    """The script `maas completion bash` prints, sourced in a real bash, as the shell calls it on <TAB>."""
    import shutil
    import subprocess

    assert main(["completion", "bash"]) == 0
    (tmp_path / "maas.bash").write_text(capsys.readouterr().out)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "digits.yaml").write_text("kind: classifier\n")

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        script = (f"source {tmp_path / 'maas.bash'}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
                  f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT={len(line)}; _shtab_maas; "
                  'printf "%s\\n" "${COMPREPLY[@]}"')
        done = subprocess.run([shutil.which("bash"), "-c", script], capture_output=True, text=True,
                              cwd=tmp_path / "work", timeout=30)
        assert done.returncode == 0, done.stderr
        return [w for w in done.stdout.split("\n") if w]

    assert complete("maas", "mo") == ["models"] and complete("maas", "models", "de") == ["delete"]
    assert complete("maas", "models", "list", "--so") == ["--sort"]
    assert complete("maas", "models", "list", "--status", "") == ["ready", "candidate", "rejected"]
    assert complete("maas", "validate", "dig") == ["digits.yaml"]
    assert main(["completion", "zsh"]) == 0 and capsys.readouterr().out.startswith("#compdef maas")
