"""`maas eval REF [--against REF]`: lm-evaluation-harness tasks on registered language models, side by side."""

from __future__ import annotations

import json
import os
import re

from maas.cli.texts import EVAL_JOB_HELP, INSECURE_HELP
from maas.exceptions import MaasError

TASK = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)=(?P<path>.+):(?P<type>multiple_choice|generate|lm_eval)$")


def add_parser(sub, default_store: str) -> None:
    e = sub.add_parser("eval", help="score registered language models on lm-evaluation-harness tasks, side by side",
                       description="Score REF (and --against REF) on the tasks of a spec's eval.tasks and/or --task "
                                   "files, with lm-eval in-process on each version's verified files. Example: maas "
                                   "eval lm/2 --against lm@production --task capitals=evals/capitals.jsonl:"
                                   "multiple_choice")
    e.add_argument("ref", help="name@alias, name/version or name (latest)")
    e.add_argument("--against", metavar="REF", help="a second version, scored on the same tasks")
    e.add_argument("--spec", help="take the tasks from this spec's eval.tasks (and its store)")
    e.add_argument("--task", action="append", default=[], metavar="NAME=PATH:TYPE",
                   help="a task file; TYPE is multiple_choice or generate (JSON Lines; exact match) or lm_eval (a "
                        "harness task YAML that is data)")
    e.add_argument("--endpoint", metavar="URL", help="score REF as served at URL (lm-eval's local-completions "
                   "through /v1/completions, the API key from MAAS_API_KEY) instead of in-process")
    e.add_argument("--model", help="with --endpoint: the served model name (default: REF's name)")
    e.add_argument("--address", help=EVAL_JOB_HELP)
    e.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    e.add_argument("--store", help="registry URI (default: the spec's, else MAAS_STORE, else the nearest .maas "
                                   "folder here or above)")
    e.add_argument("--json", metavar="FILE", help="also write every score, each line's answers, the harness and "
                                                  "task hashes to FILE")
    e.set_defaults(func=cmd_eval, default_store=default_store)


def _tasks(args) -> list:
    from pydantic import ValidationError

    from maas.spec import load_spec
    from maas.spec.evaluation import EvalTaskSpec

    tasks, store = [], None
    if args.spec:
        spec = load_spec(args.spec)
        tasks, store = list(getattr(getattr(spec, "eval", None), "tasks", []) or []), spec.store
        if not tasks and not args.task:
            raise MaasError(f"{args.spec}: eval.tasks is empty (a language model spec lists its task files there)")
    for text in args.task:
        m = TASK.match(text)
        if m is None:
            raise MaasError(f"--task {text!r}: write NAME=PATH:TYPE, e.g. capitals=evals/capitals.jsonl:"
                            "multiple_choice (TYPE: multiple_choice, generate or lm_eval)")
        try:
            tasks.append(EvalTaskSpec(name=m["name"], path=m["path"], type=m["type"]))
        except ValidationError as exc:
            raise MaasError(f"--task {text!r}: {exc.errors()[0]['msg']}") from None
    if not tasks:
        raise MaasError("no tasks: give --spec SPEC (its eval.tasks) or --task NAME=PATH:TYPE")
    if len({t.name for t in tasks}) != len(tasks):  # the spec's and --task's together
        raise MaasError(f"task names must be unique (got {[t.name for t in tasks]})")
    return tasks, args.store or store or args.default_store


def cmd_eval(args) -> int:
    from maas.eval.tasks import evaluate_refs, run_tasks, version_target
    from maas.registry import Registry

    tasks, store = _tasks(args)
    registry = Registry(store)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    results = {}
    if args.endpoint:
        if args.against:
            raise MaasError("--endpoint scores one served model: drop --against (or run maas eval twice)")
        folder, base, resolved = version_target(registry, args.ref, served=True)
        model = args.model or resolved.split("/")[0]
        print(f"{model} at {args.endpoint} (tokenizer of {resolved}): {len(tasks)} task(s) with lm-eval ...",
              flush=True)
        results[f"{model} (served)"] = run_tasks(tasks, endpoint=args.endpoint, model=model,
                                                 tokenizer=str(base or folder), api_key=os.environ.get("MAAS_API_KEY"))
    refs = [args.ref] + ([args.against] if args.against else [])
    if not args.endpoint and address:
        records = _as_job(address, store, refs, tasks, args.insecure)
    else:
        if not args.endpoint:
            results = evaluate_refs(registry, refs, tasks, progress=lambda line: print(line, flush=True))
        records = {ref: r.full_record() for ref, r in results.items()}
    _print(records, tasks, "through the endpoint" if args.endpoint else "on a Ray job on the cluster" if address
           else "in-process on each version's verified files")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


def _as_job(address: str, store: str, refs: list[str], tasks: list, insecure: bool) -> dict:
    """The same evaluation as an eval job on the cluster (``maas.Client.evaluate``), its log followed here."""
    from maas.submit import Client

    job = Client(address, insecure=insecure).evaluate(refs, tasks, store=store)
    print(f"submitted {job.id} to {address}", flush=True)
    for event in job.events():
        if event["stage"] == "result":
            if event.get("status") != "succeeded":
                raise MaasError(f"eval job {job.id} {event.get('status')}: {event.get('error') or job.tail()}")
            return event["scores"]
        print(f"  {event['stage']}: {event.get('detail', '')}", flush=True)
    raise MaasError(f"eval job {job.id} ended without a result")


def _print(records: dict, tasks: list, how: str) -> None:
    from maas.report import table

    refs = list(records)
    rows = []
    for t in tasks:
        scores = [records[r]["tasks"][t.name]["score"] for r in refs]
        first = records[refs[0]]["tasks"][t.name]
        rows.append([t.name, first["metric"], str(first["items"]), *(f"{s:.4f}" for s in scores),
                     *([f"{scores[0] - scores[1]:+.4f}"] if len(scores) == 2 else [])])
    print(table(["task", "metric", "lines", *refs, *(["difference"] if len(refs) == 2 else [])], rows))
    print(f"\n{records[refs[0]]['harness']}, {how}")
