"""``maas usage``: metered use of the store's endpoints (``maas.registry.usage``) per key, model and version,
summed over the hours asked for (or per hour with ``--hourly``)."""

from __future__ import annotations

import json

from maas.cli.jobs import _say


def add_parser(sub, default_store: str, store_help: str) -> None:
    u = sub.add_parser("usage", help="requests, errors, tokens and rows per API key, model and version",
                       description="Example: maas usage --key team-a --since 7d")
    u.add_argument("--store", default=default_store, help=store_help)
    u.add_argument("--key", metavar="NAME", help="one named key ('-': requests without a named key)")
    u.add_argument("--model", metavar="NAME", help="one model")
    u.add_argument("--since", default="24h", metavar="WHEN",
                   help="a duration back from now (90m, 24h, 7d) or a UTC date or hour (2026-12-07, "
                        "2026-12-07T15); default 24h")
    u.add_argument("--hourly", action="store_true", help="a row per UTC hour instead of one total")
    u.add_argument("--json", action="store_true", help="as JSON")
    u.set_defaults(func=cmd_usage)


def cmd_usage(args) -> int:
    from maas.registry import usage
    from maas.registry.objects import open_store
    from maas.report import table

    rows = usage.read(open_store(args.store), args.since, args.key, args.model)
    if not args.hourly:
        rows = usage.totals(rows)
    if args.json:
        _say(json.dumps([u.to_dict(args.hourly) for u in rows], indent=2))
        return 0
    if not rows:
        _say(f"no usage in {args.store} since {args.since}" + (f" for key {args.key!r}" if args.key else "") +
             (f" of model {args.model!r}" if args.model else ""))
        return 0
    head = (["hour (UTC)"] if args.hourly else []) + ["key", "model", "version", "requests", "errors",
                                                       "prompt tokens", "completion tokens", "rows"]
    _say(table(head, [([u.hour] if args.hourly else []) + [u.key, u.model, u.version] +
                      [f"{getattr(u, f):,}" for f in usage.FIELDS] for u in rows]))
    return 0
