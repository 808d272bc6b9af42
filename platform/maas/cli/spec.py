"""`maas spec schema [KIND]` and `maas spec explain PATH [--kind KIND]`: what a spec may hold, without Ray."""

from __future__ import annotations

import json
import textwrap


def add_parser(sub) -> None:
    from maas.spec.loading import SPEC_CLASSES

    s = sub.add_parser("spec", help="what a spec may hold: its JSON schema, any field explained",
                       description="Example: maas spec explain deploy.llm.max_tokens --kind lm")
    ssub = s.add_subparsers(dest="spec_cmd", metavar="{schema,explain}")
    sc = ssub.add_parser("schema", help="print the JSON schema of a kind's spec (no KIND: of any kind's)",
                         description="Example: maas spec schema lm > lm.schema.json (for an editor's YAML checks)")
    sc.add_argument("kind", nargs="?", choices=list(SPEC_CLASSES), help="classifier, encoder, lm or llm")
    ex = ssub.add_parser("explain", help="a field's type, default, bounds and meaning; a section's fields",
                         description="Example: maas spec explain train (the section), maas spec explain "
                                     "train.epochs --kind lm. Paths walk into lists' items: eval.tasks.type")
    ex.add_argument("path", nargs="?", default="", help="dotted field path, e.g. deploy.llm.max_tokens "
                                                        "(none: the top of the spec)")
    ex.add_argument("--kind", choices=list(SPEC_CLASSES), help="one kind's spec (default: every kind that has "
                                                               "the field)")
    ex.add_argument("--json", action="store_true", help="print the explanation as JSON")
    s.set_defaults(func=cmd_spec, spec_parser=s)


def cmd_spec(args) -> int:
    from dataclasses import asdict

    from maas.spec.explain import explain, spec_schema

    if args.spec_cmd is None:
        args.spec_parser.print_help()
        return 0
    if args.spec_cmd == "schema":
        print(json.dumps(spec_schema(args.kind), indent=1))
        return 0
    docs = explain(args.path, args.kind)
    if args.json:
        print(json.dumps([asdict(d) for d in docs], indent=1, default=str))
        return 0
    print("\n\n".join(_text(group) for group in _grouped(docs)))
    return 0


def _grouped(docs: list) -> list[list]:
    """Kinds whose field reads the same are shown once, named together."""
    groups: dict[str, list] = {}
    for d in docs:
        key = json.dumps([d.type, d.description, d.default, d.required, d.bounds, d.fields], default=str)
        groups.setdefault(key, []).append(d)
    return list(groups.values())


def _text(group: list) -> str:
    d = group[0]
    lines = [f"{d.path}  ({', '.join(g.kind for g in group)})", f"  type: {d.type}"]
    if d.required:
        lines.append("  required")
    elif not d.fields:
        lines.append(f"  default: {json.dumps(d.default, default=str)}")
    if d.bounds:
        lines.append(f"  bounds: {', '.join(d.bounds)}")
    if d.description:
        lines += textwrap.wrap(d.description, 100, initial_indent="  ", subsequent_indent="  ")
    if d.fields:
        width = max(len(name) for name, _, _ in d.fields)
        lines.append("  fields:")
        for name, kind, text in d.fields:
            lines += textwrap.wrap(f"{name:<{width}}  {kind}" + (f": {text}" if text else ""), 110,
                                   initial_indent="    ", subsequent_indent=" " * (width + 8))
    return "\n".join(lines)
