"""`maas batch REF --input URI --output URI`: answer every row of a data set with a registered version."""

from __future__ import annotations

import json
import os

from maas.cli.texts import INSECURE_HELP, STORE_HELP
from maas.exceptions import MaasError

BATCH_JOB_HELP = ("the cluster's Jobs API: its dashboard, http://<head>:8265, to run the batch as a Ray job there "
                  "(default: RAY_ADDRESS; none: an embedded local Ray in this process)")


def add_parser(sub, default_store: str) -> None:
    b = sub.add_parser("batch", help="answer every row of a data set with a registered model",
                       description="Ray Data reads INPUT (Parquet, CSV or JSON Lines; a file, folder or glob, local "
                                   "or s3://), the registry's verified version answers each row as its endpoint "
                                   "would: OUTPUT/answers gets the answers (with the id column and the version), "
                                   "OUTPUT/rejects each row that could not be answered, with the reason. Run the "
                                   "same command again to finish a batch that was stopped. A language model "
                                   "generates for a 'prompt' column (text) or a 'messages' column (a chat) on vLLM "
                                   "through Ray Data LLM. Example: maas batch digits@production --input "
                                   "data/new.parquet --output scored/")
    b.add_argument("ref", help="name@alias or name/version")
    b.add_argument("--input", required=True, help="the rows: a Parquet, CSV or JSON Lines file, folder or glob")
    b.add_argument("--output", required=True, help="a folder for the answers (and rejects/ in it)")
    b.add_argument("--id-column", default="id", help="the column that identifies each row (default: id)")
    b.add_argument("--format", default="parquet", choices=["parquet", "jsonl"], help="output files' format")
    b.add_argument("--batch-size", type=int, help="rows per model call and output file (default: 16384 for a "
                                                  "classifier, 256 for a text model)")
    b.add_argument("--concurrency", type=int, help="most actors answering at once (default: the cluster's CPUs "
                                                   "less one)")
    b.add_argument("--max-tokens", type=int, help="a language model: most new tokens per row (default and cap: "
                                                  "deploy.llm.max_tokens)")
    b.add_argument("--temperature", type=float, help="a language model: sampling temperature (default 0: greedy)")
    b.add_argument("--store", default=default_store, help=STORE_HELP)
    b.add_argument("--address", help=BATCH_JOB_HELP)
    b.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    b.add_argument("--json", metavar="FILE", help="also write the result (counts, version, files) to FILE")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from maas.cli.jobs import _say

    address = args.address or os.environ.get("RAY_ADDRESS") or None
    result = _as_job(args, address) if address else _here(args)
    _say(f"{result['ref']}: {result['rows']} rows -> {result['answered']} answered, {result['rejected']} rejected"
         + (f" ({result['resumed']} written by an earlier run)" if result["resumed"] else "")
         + f" in {result['seconds']:.1f} s ({result['rows_per_s']:,.0f} rows/s)")
    _say(f"answers: {result['files']['answers']}" + (f"\nrejects: {result['files']['rejects']} (each with its "
                                                     "reason)" if result["rejected"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _here(args) -> dict:
    """The batch on an embedded local Ray, in this process."""
    from maas.batch import run_batch
    from maas.cli.jobs import _say
    from maas.runtime import ensure_ray

    ensure_ray()
    return run_batch(args.store, args.ref, args.input, args.output, id_column=args.id_column,
                     batch_size=args.batch_size, concurrency=args.concurrency, fmt=args.format,
                     max_tokens=args.max_tokens, temperature=args.temperature,
                     progress=lambda line: _say(f"[batch] {line}")).to_dict()


def _as_job(args, address: str) -> dict:
    """The same batch as a Ray job on the cluster (``maas.Client.batch``), its progress followed here."""
    from maas.cli.jobs import _say
    from maas.submit import Client

    job = Client(address, insecure=args.insecure).batch(args.ref, args.input, args.output, store=args.store,
                                                         id_column=args.id_column, fmt=args.format,
                                                         batch_size=args.batch_size, max_tokens=args.max_tokens,
                                                         temperature=args.temperature)
    _say(f"submitted {job.id} to {address}")
    for event in job.events():
        if event["stage"] == "result":
            if event.get("status") != "succeeded":
                raise MaasError(f"batch job {job.id} {event.get('status')}: {event.get('error') or job.tail()}")
            return {k: v for k, v in event.items() if k not in ("stage", "status", "maas_result")}
        _say(f"[batch] {event.get('detail', '')}")
    raise MaasError(f"batch job {job.id} ended without a result")
