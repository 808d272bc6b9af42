"""``maas keys``: named API keys in the registry's store (``maas.registry.keys``): create, list, show, revoke,
rotate. A new or rotated key's secret is printed once; the store keeps only its digest. Endpoints serving from
the store take a change within their poll (``deploy.alias_poll_s``, 2 s)."""

from __future__ import annotations

import argparse
import json
import time

from maas.cli.jobs import _say
from maas.exceptions import MaasError


def add_parser(sub, default_store: str, store_help: str) -> None:
    k = sub.add_parser("keys", help="named API keys: who may call which models, until when",
                       description="Example: maas keys create team-a --models 'digits*' --expires 30d")
    k.add_argument("--store", default=default_store, help=store_help)
    ksub = k.add_subparsers(dest="keys_cmd")  # none: the help
    store_after = argparse.ArgumentParser(add_help=False)
    store_after.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    c = ksub.add_parser("create", help="make a key and print its secret (once)", parents=[store_after],
                        description="Example: maas keys create team-a --models digits 'llm-*' --expires 2027-01-31")
    c.add_argument("name", help="the key's name (a-z 0-9 . _ -), shown in logs and lists")
    c.add_argument("--models", nargs="+", default=[], metavar="PATTERN",
                   help="model names it may call; shell-style patterns (default: every model)")
    c.add_argument("--expires", metavar="WHEN", help="a date (2027-01-31, UTC) or a duration from now (90m, 12h, "
                                                     "30d, 4w); default: never")
    c.add_argument("--rpm", type=int, metavar="N", help="at most N requests a minute, across every replica")
    c.add_argument("--requests-per-day", type=int, metavar="N", help="at most N requests a UTC day")
    c.add_argument("--tpm", type=int, metavar="N", help="at most N tokens (prompt + completion) a minute")
    c.add_argument("--tokens-per-day", type=int, metavar="N", help="at most N tokens a UTC day")
    c.add_argument("--admin", action="store_true", help="it may also manage keys, move aliases and read everyone's "
                                                          "usage over HTTP (/maas/v1/...)")
    c.add_argument("--json", action="store_true", help="print the record and the secret as JSON")
    ksub.add_parser("list", help="every key: state, models, expiry (never a secret)", parents=[store_after],
                    description="Example: maas keys list --store s3://bucket/maas") \
        .add_argument("--json", action="store_true", help="as JSON")
    for cmd, text in (("show", "one key's record and its history"), ("revoke", "stop a key, on every endpoint"),
                      ("rotate", "give a key a new secret (printed once); the old one stops working")):
        one = ksub.add_parser(cmd, help=text, parents=[store_after], description=f"Example: maas keys {cmd} team-a")
        one.add_argument("name", help="the key's name (maas keys list shows them)")
        one.add_argument("--json", action="store_true", help="as JSON")
    k.set_defaults(func=cmd_keys)


def expires_at(text, now: float | None = None) -> float | None:
    """``--expires``: a duration from now (``30d``) or a UTC date (``2027-01-31``, ``2027-01-31T12:00``)."""
    if text is None:
        return None
    now = time.time() if now is None else now
    from maas.registry.usage import duration_s

    seconds = duration_s(text)
    if seconds is not None:
        if seconds == 0:
            raise MaasError(f"--expires {text}: a duration must be at least 1 minute")
        return now + seconds
    import calendar

    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"):
        try:
            return float(calendar.timegm(time.strptime(text.strip(), fmt)))
        except ValueError:
            continue
    raise MaasError(f"--expires {text!r}: give a date (2027-01-31, UTC) or a duration (90m, 12h, 30d, 4w)")


def cmd_keys(args) -> int:
    from maas.registry import keys
    from maas.registry.objects import open_store

    store, by = open_store(args.store), f"cli:{_user()}"
    if args.keys_cmd == "create":
        key, secret = keys.create(store, args.name, args.models, expires_at(args.expires), by,
                                  {k: getattr(args, k) for k in keys.LIMITS}, args.admin)
        return _secret(key, secret, args.json, "made")
    if args.keys_cmd == "rotate":
        key, secret = keys.rotate(store, args.name, by)
        return _secret(key, secret, args.json, "rotated")
    if args.keys_cmd == "revoke":
        key = keys.revoke(store, args.name, by)
        _say(json.dumps(key.to_dict(), indent=2) if args.json else
             f"revoked API key {key.name!r}; endpoints refuse it within their poll (2 s by default)")
        return 0
    if args.keys_cmd == "show":
        found = keys.history(store, args.name)
        _say(json.dumps([k.to_dict() for k in found], indent=2) if args.json else _history(found))
        return 0
    found = keys.listing(store)
    if args.json:
        _say(json.dumps([{**k.to_dict(), "state": k.state()} for k in found], indent=2))
    elif not found:
        _say(f"no API keys in {args.store} (`maas keys create NAME` makes one)")
    else:
        from maas.report import table

        _say(table(["name", "state", "models", "limits", "expires", "prefix", "created", "changed"],
                   [[k.name, k.state() + (" (admin)" if k.admin else ""), ", ".join(k.models) or "*", _limits(k),
                     _when(k.expires_at), k.prefix + "...",
                     _when(k.created_at), f"{k.change} {_when(k.at)}"] for k in found]))
    return 0


def _secret(key, secret: str, as_json: bool, what: str) -> int:
    if as_json:
        _say(json.dumps({**key.to_dict(), "secret": secret}, indent=2))
        return 0
    kind = "admin API key" if key.admin else "API key"
    _say(f"{what} {kind} {key.name!r} (models: {', '.join(key.models) or 'every model'}; limits: {_limits(key)}; "
         f"expires: {_when(key.expires_at)}). Its secret, shown only now:\n\n  {secret}\n\nSend it as "
         "'Authorization: Bearer <secret>' (the openai client's api_key).")
    return 0


def _limits(key) -> str:
    unit = {"rpm": "requests/min", "requests_per_day": "requests/day", "tpm": "tokens/min",
            "tokens_per_day": "tokens/day"}
    return ", ".join(f"{v:,} {unit[k]}" for k, v in key.limits()) or "none"


def _history(found) -> str:
    last = found[-1]
    lines = [f"{last.name}: {last.state()}; models {', '.join(last.models) or '*'}; limits {_limits(last)}; "
             f"expires {_when(last.expires_at)}; secret {last.prefix}..."]
    lines += [f"  {k.seq:>3}  {_when(k.at)}  {k.change:<8} by {k.by}" for k in found]
    return "\n".join(lines)


def _when(t) -> str:
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _user() -> str:
    from maas.cli.models import _user as user

    return user()
