"""Plumbing shared by the job entrypoints: arguments, the result line, signals, exit codes.

Every job ends by printing exactly one result line, a JSON object with the key ``maas_result`` (the
stage), ``status`` ("succeeded", "failed" or "stopped") and the stage's figures. ``maas.Client`` parses it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from typing import Callable

import jobs  # import path bootstrap
from maas import progress as maas_progress
from maas.exceptions import MaasError
from maas.spec import PipelineSpec, load_spec, spec_from_dict
from maas.submit import RESULT_KEY


def emit(stage: str, status: str, **fields) -> None:
    print(json.dumps({RESULT_KEY: stage, "status": status, **fields}, default=str), flush=True)


def progress(stage: str, detail: str) -> None:
    print(maas_progress.line(stage, detail), flush=True)


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m jobs.{stage}", description=description)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", help="pipeline spec file (YAML), relative to the job's working directory")
    src.add_argument("--spec-json", help="the spec as JSON (what maas.Client sends)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=5")
    return p


def load(args) -> PipelineSpec:
    if args.spec_json:
        return spec_from_dict(json.loads(args.spec_json), args.overrides, source="--spec-json")
    return load_spec(args.spec, args.overrides)


def _stop(signum, frame):
    raise KeyboardInterrupt


def kind_stage(stage: str) -> Callable[[argparse.Namespace, PipelineSpec], dict]:
    """The body of a stage job: the spec's kind runs it (``maas.pipelines``, ``JOB_STAGES[stage]``) with the
    job's arguments as options."""
    def body(args, spec):
        from maas.pipelines import implementation

        return implementation(spec).JOB_STAGES[stage](spec, vars(args), progress)

    return body


def run_job(stage: str, argv_parser: argparse.ArgumentParser, body: Callable | None = None,
            cleanup: Callable[[], None] | None = None) -> int:
    """Parse, check the spec's kind has ``stage``, connect to Ray, run ``body`` (default: the kind's stage),
    print the result line; exit 0 / 1 (failed) / 130 (stopped)."""
    from maas.pipelines import check_stage
    from maas.runtime import ensure_ray

    args = argv_parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # `ray job stop` sends SIGTERM first
    started = time.perf_counter()
    body = body or kind_stage(stage)
    try:
        spec = load(args)
        check_stage(spec, stage)
        # RAY_ADDRESS is set for job drivers: join the job's cluster. When maas came as source in the job's
        # working_dir, its workers (Ray Data tasks, training workers) need it too: ship it as a py_module.
        runtime_env = {"py_modules": [jobs.SHIPPED_SOURCE]} if jobs.SHIPPED_SOURCE else None
        ensure_ray(quiet=True, worker_logs=True, runtime_env=runtime_env)
        fields = body(args, spec)
        emit(stage, "succeeded", seconds=round(time.perf_counter() - started, 2), **fields)
        return 0
    except KeyboardInterrupt:
        if cleanup:
            cleanup()
        emit(stage, "stopped", seconds=round(time.perf_counter() - started, 2))
        return 130
    except MaasError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        emit(stage, "failed", error=str(err), error_type=type(err).__name__)
        return 1
    except Exception as err:  # a bug, not a user error: keep the traceback in the job log
        traceback.print_exc()
        emit(stage, "failed", error=f"{type(err).__name__}: {err}", error_type=type(err).__name__)
        return 1
