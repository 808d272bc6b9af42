"""Score registered language models on lm-evaluation-harness tasks, as a Ray job (``maas.Client.evaluate``,
``maas eval --address``): lm-eval in-process on each version's verified files, the same code ``maas eval``
runs without a cluster. One result line: ``scores`` per version (harness, model, per task metric, score,
lines, hash and each line's answers).

    python -m jobs.evaluate --store s3://bucket/maas --ref lm/3 --ref lm@production --tasks-json '[...]'
"""

from __future__ import annotations

import argparse
import json
import sys

import jobs  # noqa: F401  (import path bootstrap)
from jobs._common import emit, progress
from maas.exceptions import MaasError


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__)
    p.add_argument("--store", required=True, help="the registry's URI")
    p.add_argument("--ref", action="append", required=True, help="a version to score (repeat for several)")
    p.add_argument("--tasks-json", required=True, help="the tasks: a JSON list of EvalTaskSpec fields")
    args = p.parse_args()
    from maas.eval.tasks import evaluate_refs
    from maas.registry import Registry
    from maas.spec.evaluation import EvalTaskSpec

    try:
        tasks = [EvalTaskSpec(**t) for t in json.loads(args.tasks_json)]
        results = evaluate_refs(Registry(args.store), args.ref, tasks, lambda line: progress("eval", line))
    except (MaasError, ValueError) as exc:
        emit("eval", "failed", error=str(exc))
        return 1
    emit("eval", "succeeded", scores={ref: r.full_record() for ref, r in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
