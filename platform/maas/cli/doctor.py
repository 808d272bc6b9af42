"""``maas doctor``: the machine and its cluster checked, each failure with its fix (``maas.doctor``)."""

from __future__ import annotations

import json

from maas.cli.jobs import _say


def add_parser(sub, default_store: str, store_help: str) -> None:
    d = sub.add_parser("doctor", help="check Python, packages, vLLM, GPUs, the Ray cluster and its token, the "
                                      "store, serving ports and shared memory; say how to fix what fails",
                       description="Example: maas doctor --address http://head:8265 --store s3://bucket/maas. "
                                   "Exits 1 when a check fails.")
    d.add_argument("--address", help="the cluster's Jobs API to check: its dashboard, http://<head>:8265 (default: "
                                     "RAY_ADDRESS; none: an embedded local Ray, nothing to check)")
    d.add_argument("--store", default=default_store, help=store_help)
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.add_argument("--quick", action="store_true", help="read vLLM's metadata only; do not import it (~10 s)")
    d.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from maas.doctor import run_checks
    from maas.report import table

    checks = run_checks(address=args.address, store=args.store, quick=args.quick)
    if args.json:
        _say(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        _say(table(["check", "status", "detail"], [[c.name, c.status.upper() if c.status != "ok" else "ok",
                                                    c.detail] for c in checks]))
        fixes = [f"  {c.name}: {c.fix}" for c in checks if c.status != "ok" and c.fix]
        if fixes:
            _say("\nto fix:\n" + "\n".join(fixes))
    return 1 if any(c.status == "fail" for c in checks) else 0
