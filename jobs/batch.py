"""Answer every row of a data set with a registered model, as a Ray job (``maas.Client.batch``,
``ray job submit -- python -m jobs.batch ...``): the same ``maas.batch.run_batch`` that ``maas batch`` runs.
Progress lines while it works; one result line: the version, rows in, answered, rejected, the output folders.

    python -m jobs.batch --store s3://bucket/maas --ref digits@production --input s3://bucket/new/ \\
        --output s3://bucket/scored/ --id-column id
"""

from __future__ import annotations

import argparse
import signal
import sys

import jobs
from jobs._common import _stop, emit, progress
from maas.exceptions import MaasError


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the registry's URI")
    p.add_argument("--ref", required=True, help="name@alias or name/version")
    p.add_argument("--input", required=True, help="Parquet, CSV or JSON Lines: a file, folder or glob")
    p.add_argument("--output", required=True, help="the folder for answers/ and rejects/")
    p.add_argument("--id-column", default="id")
    p.add_argument("--format", default="parquet", choices=["parquet", "jsonl"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--max-tokens", type=int, help="a language model: most new tokens per row")
    p.add_argument("--temperature", type=float, help="a language model: sampling temperature (default 0)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # `ray job stop`: what was written stays, a resubmit finishes it
    from maas.batch import run_batch
    from maas.runtime import ensure_ray

    try:
        ensure_ray(quiet=True, runtime_env={"py_modules": [jobs.SHIPPED_SOURCE]} if jobs.SHIPPED_SOURCE else None)
        result = run_batch(args.store, args.ref, args.input, args.output, id_column=args.id_column,
                           batch_size=args.batch_size, concurrency=args.concurrency, fmt=args.format,
                           max_tokens=args.max_tokens, temperature=args.temperature,
                           progress=lambda line: progress("batch", line))
    except KeyboardInterrupt:
        emit("batch", "stopped")
        return 130
    except MaasError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        emit("batch", "failed", error=str(err), error_type=type(err).__name__)
        return 1
    emit("batch", "succeeded", **result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
