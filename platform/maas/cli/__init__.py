"""The ``maas`` command: a thin skin over the library.

User errors (bad spec, missing data, unknown model ...) print one clear message and exit 2; set
``MAAS_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback

from maas import progress
from maas.cli.jobs import _say, cmd_jobs, cmd_logs, cmd_status, cmd_stop, cmd_submit
from maas.cli.serve import _interrupt, cmd_serve, serve_forever
from maas.cli.texts import INSECURE_HELP, JOBS_HELP, JOBS_ONLY_HELP, RAY_HELP, STORE_HELP
from maas.exceptions import MaasError
from maas.pipelines import STAGES
from maas.version import __version__


def default_store(start: str | None = None) -> str:
    """The store a command reads when not told: ``MAAS_STORE``, else the nearest ``.maas`` folder in ``start``
    (the working folder) or above it, as git finds its repository, else ``.maas`` (where ``maas run``
    publishes). So ``maas models list`` in a project's sub-folder reads the project's store."""
    if os.environ.get("MAAS_STORE"):
        return os.environ["MAAS_STORE"]
    here = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.isdir(os.path.join(here, ".maas")):
            return os.path.relpath(os.path.join(here, ".maas")) if here == os.path.abspath(os.getcwd()) \
                else os.path.join(here, ".maas")
        parent = os.path.dirname(here)
        if parent == here:
            return ".maas"
        here = parent


def cmd_validate(args) -> int:
    from maas.data.source import check_inputs
    from maas.spec import load_spec

    overrides = list(args.set) + [x for x in args.specs if _is_override(x)]
    failed = 0
    for path in [x for x in args.specs if not _is_override(x)]:
        try:
            spec = load_spec(path, overrides)
        except MaasError as err:
            _say(str(err))
            failed += 1
            continue
        problems, notes = check_inputs(spec)
        if problems:
            _say(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  - {f}: {m}" for f, m in problems))
            failed += 1
        else:
            _say(f"{path}: ok (model {spec.model.name}, spec hash {spec.spec_hash()[:12]})")
        for note in notes:
            _say(f"  note: {note}")
    return 2 if failed else 0


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a ``key.path=value`` spec override


def _is_override(text: str) -> bool:
    """``key.path=value`` (a spec override), as opposed to a spec file's path."""
    return OVERRIDE.match(text) is not None and not os.path.exists(text)


def cmd_data(args) -> int:
    from maas.report import table

    if args.data_cmd == "schema":
        import yaml

        from maas.data.prepare import infer_dataset_schema
        from maas.runtime import ensure_ray
        from maas.spec import load_spec

        spec = load_spec(args.spec, args.overrides)
        ensure_ray(args.address)
        schema = infer_dataset_schema(spec.data)
        print(f"# inferred from {spec.data.path} (after data.ops); add min/max/allowed, then pin it with\n"
              f"# data.schema_file: <this file>   (or paste it under data.columns)")
        print(yaml.safe_dump({"columns": schema}, sort_keys=False), end="")
        return 0
    # report: the data report of a run (default: the newest)
    from maas.data.runs import read_report

    run_id, report = read_report(args.store, args.run_id)
    c = report["counts"]
    _say(f"run {run_id}: {c['rows_in']} rows in -> {c['rows_ok']} ok, {c['rows_rejected']} rejected, "
         f"{c.get('rows_dropped', 0)} dropped by ops; splits {c.get('splits')}")
    _say(f"fingerprint {report['fingerprint'][:16]}  schema "
         f"{'inferred' if report.get('schema_inferred') else 'declared'}"
         f"  features {len(report['features'])}  classes {report['classes']}")
    rows = []
    for col, st in report.get("columns", {}).items():
        if "mean" in st:
            rows.append([col, st["count"], st["nulls"], _fmt(st["min"]), _fmt(st["max"]), _fmt(st["mean"]),
                         _fmt(st["std"]), ""])
        else:
            top = ", ".join(f"{k} ({v})" for k, v in list(st.get("top", {}).items())[:3])
            rows.append([col, st["count"], st["nulls"], "", "", "", "", top])
    if rows:
        _say(table(["column", "rows", "nulls", "min", "max", "mean", "std", "top values"], rows))
    for reason, n in list(c.get("reject_reasons", {}).items())[:10]:
        _say(f"  quarantined {n:>6}  {reason}")
    if report.get("rejects_path"):
        _say(f"every quarantined row, with its reason: {report['rejects_path']}")
    return 0


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4g}"


def cmd_run(args) -> int:
    from maas.data.source import check_local_path
    from maas.pipelines import implementation
    from maas.runtime import ensure_ray
    from maas.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    kind = implementation(spec)
    check_local_path(getattr(spec, "data", None))  # before Ray starts: a typo costs no Ray start-up
    serve = spec.deploy.enabled and not args.no_serve
    started = time.perf_counter()
    local = ensure_ray(args.address, quiet=not args.verbose)
    _say(f"maas: {'embedded local Ray' if local else 'Ray at ' + (args.address or os.environ['RAY_ADDRESS'])}"
         f" | spec {args.spec} ({spec.spec_hash()[:12]})")
    result = kind.run(spec, serve=serve, progress=lambda stage, detail: _say(f"  {progress.line(stage, detail)}"))
    _say("")
    _say(kind.summary(result, spec))
    _say("")
    _say(f"pipeline finished in {time.perf_counter() - started:.1f} s; stages (s): "
         + ", ".join(f"{k} {v}" for k, v in result.stage_seconds.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2, default=str)
    if not serve:
        return 0
    endpoint, curl = kind.try_it(result, spec)
    _say(f"\nendpoint: {endpoint}  (serving {result.promoted_ref})")
    _say("try it:\n  " + curl)
    _say("\nserving until Ctrl-C ...")
    return serve_forever()



def build_parser() -> argparse.ArgumentParser:
    store = default_store()
    p = argparse.ArgumentParser(prog="maas", description="Model-as-a-Service on Ray: data -> train -> "
                                                         "compress -> registry -> serve, from one spec.")
    p.add_argument("--version", action="version", version=f"maas {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the whole pipeline of a spec and serve the result",
                       description="Example: maas run examples/digits.yaml train.epochs=5 --no-serve")
    r.add_argument("spec", help="pipeline spec (YAML)")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=5")
    r.add_argument("--no-serve", action="store_true", help="exit after publishing instead of serving")
    r.add_argument("--address", help=RAY_HELP)
    r.add_argument("--json", metavar="FILE", help="also write the run's result as JSON to FILE")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress bars")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check spec files; every problem is reported at once",
                       description="Example: maas validate examples/*.yaml train.epochs=5 (no Ray needed)")
    v.add_argument("specs", nargs="+", metavar="spec|key=value",
                   help="spec files (YAML), then key=value overrides applied to each, e.g. train.epochs=5")
    v.add_argument("--set", action="append", default=[], metavar="key=value", help="an override (the same as a "
                   "key=value argument)")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("data", help="infer a schema to pin, or show a run's data report")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    ds = dsub.add_parser("schema", help="print the schema inferred from a spec's data (YAML, to pin)",
                         description="Example: maas data schema examples/digits.yaml > schema.yaml")
    ds.add_argument("spec", help="pipeline spec (YAML) whose data to read")
    ds.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. data.path=new.csv")
    ds.add_argument("--address", help=RAY_HELP)
    dr = dsub.add_parser("report", help="counts, rejects and per-column statistics of a run's data stage",
                         description="Example: maas data report (the newest run), maas data report RUN_ID")
    dr.add_argument("run_id", nargs="?", help="run id (default: the newest run with a data report)")
    dr.add_argument("--store", default=store, help=STORE_HELP)
    d.set_defaults(func=cmd_data)

    from maas.cli.batch import add_parser as add_batch
    from maas.cli.completion import add_parser as add_completion
    from maas.cli.doctor import add_parser as add_doctor
    from maas.cli.evaluate import add_parser as add_eval
    from maas.cli.keys import add_parser as add_keys
    from maas.cli.models import add_parser as add_models
    from maas.cli.spec import add_parser as add_spec
    from maas.cli.usage import add_parser as add_usage

    add_models(sub, store, STORE_HELP)
    add_keys(sub, store, STORE_HELP)
    add_usage(sub, store, STORE_HELP)
    add_eval(sub, store)
    add_batch(sub, store)
    add_spec(sub)
    add_doctor(sub, store, STORE_HELP)
    add_completion(sub)

    s = sub.add_parser("serve", help="serve registered models (Open Inference Protocol v2; LLMs on vLLM with "
                                              "OpenAI routes)",
                       description="Example: maas serve digits@production --canary candidate:10 --port 8000")
    s.add_argument("refs", nargs="+", metavar="ref", help="name@alias or name/version (several: one app)")
    s.add_argument("--canary", metavar="ALIAS[:PERCENT]",
                   help="send PERCENT%% (default 10) of the first model's requests to NAME@ALIAS")
    s.add_argument("--store", default=store, help=STORE_HELP)
    s.add_argument("--spec", help="take the deploy settings (replicas, batching, limits) from this spec")
    s.add_argument("--host", help="bind address (default: the spec's, else 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (default: the spec's, else 8000)")
    s.add_argument("--grpc-port", type=int, help="OIP gRPC port (default: the spec's, else 9000; 0: no gRPC)")
    s.add_argument("--proxy", choices=["throughput", "default"],
                   help="Serve's ingress: HAProxy + direct ingress (throughput, the default) or Serve's proxy")
    s.add_argument("--address", help=RAY_HELP)
    s.set_defaults(func=cmd_serve)

    sb = sub.add_parser("submit", help="submit a stage (default: the whole pipeline) as a Ray job",
                        description="Example: maas submit examples/digits.yaml train.epochs=5 --address "
                                    "http://head:8265 --async")
    sb.add_argument("spec", help="pipeline spec (YAML)")
    sb.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=5")
    sb.add_argument("--stage", default="pipeline", choices=STAGES, help="which stage runs as the job (default: "
                    "the whole pipeline)")
    sb.add_argument("--address", help=JOBS_HELP)
    sb.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    mode = sb.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true", default=True, help="stream the logs until the job "
                                                                          "ends (default); Ctrl-C detaches")
    mode.add_argument("--async", dest="async_", action="store_true", help="print the job id and return")
    sb.add_argument("--verbose", action="store_true", help="follow the raw log (Ray's own lines and the result "
                                                          "line) instead of the stage progress and summary")
    sb.add_argument("--serve", action="store_true", help="pipeline stage: deploy the promoted model at the end")
    sb.add_argument("--run-id", help="train stage: use the splits of this earlier preprocess run")
    sb.add_argument("--run-name", help="train stage: a stable run name; submitting again with the same name "
                                       "resumes a stopped or failed run from its last checkpoint")
    sb.add_argument("--parent", help="compress stage: the fp32 version to compress (name/version)")
    sb.add_argument("--ref", help="deploy stage: the version to serve (name@alias or name/version)")
    sb.set_defaults(func=cmd_submit)
    for cmd, helptext, fn in (("jobs", "list the cluster's jobs", cmd_jobs),
                              ("status", "a job's status (and its error's last lines)", cmd_status),
                              ("logs", "a job's logs", cmd_logs), ("stop", "stop a job", cmd_stop)):
        example = f"maas {cmd}" + ("" if cmd == "jobs" else " raysubmit_XYZ") + " --address http://head:8265"
        c = sub.add_parser(cmd, help=helptext, description=f"Example: {example}")
        if cmd != "jobs":
            c.add_argument("job_id", help="the job's submission id (maas jobs lists them)")
        if cmd == "logs":
            c.add_argument("--follow", action="store_true", help="stream until the job ends; Ctrl-C detaches")
            c.add_argument("--verbose", action="store_true", help="with --follow: the raw log, not the progress")
        c.add_argument("--address", help=JOBS_ONLY_HELP)
        c.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
        c.set_defaults(func=fn)
    return p


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's sub-commands by name ({} for a leaf); argparse keeps them only in its private action list."""
    return next((dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`maas submit spec.yaml --address URL train.epochs=3`), which
    # argparse does not take for a positional list by itself
    if extra and hasattr(args, "overrides") and all(OVERRIDE.match(x) for x in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd in ("submit", "logs"):
        import signal

        signal.signal(signal.SIGINT, _interrupt)  # also when started in the background by a shell
    args.parser = parser
    if (args.cmd, getattr(args, "models_cmd", 1), getattr(args, "keys_cmd", 1)) in (("models", None, 1),
                                                                                   ("keys", 1, None)):
        subcommands(parser)[args.cmd].print_help()
        return 0
    try:
        return args.func(args)
    except BrokenPipeError:  # `maas models list | head -1`: the reader has gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor is flushing at exit
        return 0
    except MaasError as err:
        if os.environ.get("MAAS_DEBUG"):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
