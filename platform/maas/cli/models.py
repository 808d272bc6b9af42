"""``maas models``: list, show, compare, alias, delete, import and gc registered versions (a skin over
``maas.registry``: ``Registry`` and ``maas.registry.views``)."""

from __future__ import annotations

import argparse
import json
import os
import time

from maas.cli.jobs import _say
from maas.exceptions import MaasError


def add_parser(sub, default_store: str, store_help: str) -> None:
    m = sub.add_parser("models", help="list and inspect registered models",
                       description="Example: maas models list digits --status ready --sort created --reverse")
    m.add_argument("--store", default=default_store, help=store_help)
    msub = m.add_subparsers(dest="models_cmd")  # none: the help (in main)
    # --store is taken before or after the sub-command (`maas models list --store s3://...`)
    store_after = argparse.ArgumentParser(add_help=False)
    store_after.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    _add_views(msub, store_after)
    _add_alias(msub, store_after)
    rm = msub.add_parser("delete", help="delete a version (refused while an alias points at it; its files go "
                                        "at the next gc)", parents=[store_after],
                         description="Example: maas models delete digits/3 --reason 'trained on the wrong split'")
    rm.add_argument("ref", help="name/version")
    rm.add_argument("--reason", metavar="TEXT", help="why; kept with the deletion")
    imp = msub.add_parser("import", help="publish a Hugging Face causal LM folder (local or a URI such as "
                                         "s3://...) as a version, every file checksummed", parents=[store_after],
                          description="Example: maas models import ./Llama-3.2-1B --name llama")
    imp.add_argument("source", help="folder with config.json, *.safetensors and tokenizer.json")
    imp.add_argument("--name", required=True, help="registry name of the model")
    gc = msub.add_parser("gc", help="remove uploads no version names (killed or failed publications, deleted "
                                    "versions)", parents=[store_after],
                         description="Example: maas models gc --grace-s 0 (uploads of any age)")
    gc.add_argument("--grace-s", type=float, default=3600.0, help="keep uploads younger than this (a "
                    "publication may still be in progress; default 3600)")
    gc.add_argument("--lease-s", type=float, default=60.0, help="keep uploads whose publication renewed its lease "
                    "within this many seconds (one in progress renews it every 10 s; default 60)")
    m.set_defaults(func=cmd_models)


def _add_views(msub, store_after) -> None:
    from maas.registry.views import SORTS, STATUSES

    ls = msub.add_parser("list", help="versions: status, method, headline metric, gate, parent, aliases",
                         parents=[store_after],
                         description="Example: maas models list digits --status ready --sort test_accuracy --reverse")
    ls.add_argument("name", nargs="?", help="one model (default: every model)")
    ls.add_argument("--status", choices=STATUSES, help="only versions with this status")
    ls.add_argument("--alias", help="only the version holding this alias")
    ls.add_argument("--sort", default="name", metavar="KEY", help=f"{', '.join(SORTS)} or a metric's name "
                    "(default: name, then version)")
    ls.add_argument("--reverse", action="store_true", help="sort in descending order (newest, largest first)")
    ls.add_argument("--limit", type=int, metavar="N", help="at most N versions")
    ls.add_argument("--json", action="store_true", help="print the versions' summaries as JSON")
    show = msub.add_parser("show", help="one version: status and why, metrics, lineage, files",
                           parents=[store_after], description="Example: maas models show digits@production")
    show.add_argument("ref", help="name@alias, name/version or name (latest)")
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    cmp = msub.add_parser("compare", help="versions side by side: status and why, every metric",
                          parents=[store_after], description="Example: maas models compare digits/1 digits/2")
    cmp.add_argument("refs", nargs="+", metavar="ref", help="name@alias, name/version or name (latest)")


def _add_alias(msub, store_after) -> None:
    al = msub.add_parser("alias", help="point an alias at a version (served apps roll over to it); with the "
                                       "model name alone, the history of its aliases", parents=[store_after],
                         description="Example: maas models alias digits production 3")
    al.add_argument("name", help="model name")
    al.add_argument("alias", nargs="?", help="alias to move (none: the history of every alias)")
    al.add_argument("version", type=int, nargs="?", help="version number it should point at")
    al.add_argument("--delete", action="store_true", help="remove the alias instead")
    al.add_argument("--force", action="store_true", help="move it to a candidate (a version that did not match "
                    "the champion) anyway; needs --reason")
    al.add_argument("--reason", metavar="TEXT", help="why; kept in the alias history")
    al.add_argument("--expect", metavar="VERSION|none", help="move only if the alias still points at VERSION "
                    "(none: not set); a concurrent move is never overwritten either way")


def cmd_models(args) -> int:
    from maas.registry import Registry

    reg = Registry(args.store)
    if reg.store.local and args.models_cmd != "import" and not os.path.isdir(reg.root):
        raise MaasError(f"no registry at {reg.root}: pass --store (or set MAAS_STORE) to the store your runs "
                        "publish to, or run `maas run examples/digits.yaml` here to make one")
    return {"list": _list, "show": _show, "compare": _compare, "alias": _alias, "delete": _delete,
            "import": _import, "gc": _gc}[args.models_cmd](reg, args)


def _list(reg, args) -> int:
    from maas.registry.views import headline, select, summary
    from maas.report import human_bytes, table

    versions = select(reg, args.name, status=args.status, alias=args.alias, sort=args.sort, reverse=args.reverse,
                      limit=args.limit)
    if args.json:
        _say(json.dumps([summary(mv) for mv in versions], indent=2))
        return 0
    if not versions:
        filtered = args.status or args.alias
        _say(f"no versions match in {reg.location}" if filtered or args.name else
             f"no models in {reg.location} (run `maas run examples/digits.yaml` to make one)")
        return 0
    rows = []
    for mv in versions:
        top = headline(mv)
        gate = mv.lineage.get("gate") or {}
        rows.append([mv.ref, mv.status, mv.lineage.get("method", ""), mv.task,
                     f"{top[0]} {top[1]:.4g}" if top else "", human_bytes(mv.size_bytes),
                     mv.lineage.get("parent") or "", "" if not gate else "pass" if gate.get("passed") else "FAIL",
                     ",".join(mv.aliases), time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.created_at))])
    _say(table(["version", "status", "method", "task", "headline", "size", "parent", "gate", "aliases",
                "created"], rows))
    return 0


def _show(reg, args) -> int:
    from maas.registry.views import summary

    mv = reg.resolve(args.ref)
    _say(json.dumps(mv.model_dump(mode="json"), indent=2) if args.json else _render(summary(mv)))
    return 0


def _text(value) -> str:
    if isinstance(value, dict):
        return " / ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _render(view: dict) -> str:
    """``summary``'s dict as aligned text."""
    from maas.report import human_bytes

    head = f"{view['ref']}  {view['status']}" + (f"  ({', '.join(view['aliases'])})" if view["aliases"] else "")
    lines = [head]
    for key in ("task", "runtime", "method", "created", "parent", "gate", "champion", "why"):
        if key in view:
            lines.append(f"  {key:<10} {view[key]}")
    for key in ("metrics", "data", "run", "signature"):
        if key in view:
            lines.append(f"  {key}")
            lines += [f"    {k:<24} {_text(v)}" for k, v in view[key].items()]
    lines.append(f"  files      {human_bytes(view['size_bytes'])} in {len(view.get('files', {}))}")
    lines += [f"    {n:<24} {human_bytes(f['size'] or 0):>10}  sha256 {f['sha256']}..."
              for n, f in view.get("files", {}).items()]
    return "\n".join(lines)


def _compare(reg, args) -> int:
    from maas.report import compare_versions

    _say(compare_versions([reg.resolve(ref) for ref in args.refs]))
    return 0


def _delete(reg, args) -> int:
    from maas.registry.model_version import parse_ref

    name, version, alias = parse_ref(args.ref)
    if version is None:
        raise MaasError(f"give the version to delete as name/version (e.g. {name}/3), not {args.ref!r}")
    reg.delete_version(name, version, by=f"cli:{_user()}", reason=args.reason)
    _say(f"deleted {name}/{version}; its files are removed by the next `maas models gc` (number {version} is "
         "never reused)")
    return 0


def _import(reg, args) -> int:
    from maas.registry.hf_import import import_hf_model
    from maas.report import human_bytes

    mv, skipped = import_hf_model(reg, args.source, args.name, by=f"cli:{_user()}")
    _say(f"imported {args.source} as {mv.ref} ({mv.signature['architecture']}, {len(mv.files)} files, "
         f"{human_bytes(mv.size_bytes)}; every file checksummed)" +
         (f"; not imported: {', '.join(skipped)}" if skipped else ""))
    return 0


def _gc(reg, args) -> int:
    removed = reg.gc(grace_s=args.grace_s, lease_s=args.lease_s)
    _say(f"removed {removed} upload(s) that no version names (older than {args.grace_s:g} s, no publication "
         f"lease renewed within {args.lease_s:g} s) from {reg.location}")
    return 0


def _alias(reg, args) -> int:
    from maas.report import table

    if args.alias is None:  # the history of every alias of the model
        if args.name not in reg.list_models():
            raise MaasError(f"no model named {args.name!r} in {reg.location} (see `maas models list`)")
        rows = [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["at"])) if h.get("at") else "-",
                 h["alias"], "-" if h.get("previous") is None else h["previous"],
                 "(removed)" if h["version"] is None else h["version"], h.get("by") or "-", h.get("reason") or ""]
                for h in reg.alias_history(args.name)]
        _say(table(["when", "alias", "from", "to", "by", "reason"], rows) if rows else f"{args.name} has no aliases")
        return 0
    expected = _expected(args.expect)
    by = f"cli:{_user()}"
    if args.delete:
        reg.delete_alias(args.name, args.alias, expected=expected, by=by)
        _say(f"removed {args.name}@{args.alias}")
        return 0
    if args.version is None:
        raise MaasError("give the version the alias should point at, or --delete (no alias: its history)")
    if args.force and not (args.reason or "").strip():
        raise MaasError("--force needs --reason TEXT: why this version takes the alias (kept in its history)")
    move = reg.set_alias(args.name, args.alias, args.version, expected=expected, by=by, force=args.force,
                         reason=args.reason)
    _say(f"{args.name}@{args.alias}: {move['previous'] if move['previous'] is not None else '-'} -> "
         f"{args.version} (serving replicas follow within deploy.alias_poll_s)")
    return 0


def _expected(text):
    """--expect: a version number, 'none' (the alias must not exist), or unset (whatever it is when read)."""
    from maas.registry.store import UNCHECKED

    if text is None:
        return UNCHECKED
    if text.lower() == "none":
        return None
    if not text.isdigit():
        raise MaasError(f"--expect takes a version number or 'none', got {text!r}")
    return int(text)


def _user() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "?"
