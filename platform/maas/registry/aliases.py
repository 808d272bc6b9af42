"""Aliases as an append-only log of moves: compare-and-swap with history, on any store with create-only writes.

``models/<name>/aliases/<alias>/<seq>.json`` holds one move each: ``{"version", "previous", "at", "by"}``
(``version`` null: the alias was removed). The alias points where its highest ``seq`` says. A move reads the
log, checks that the alias still points where the mover expects (``expected``, what the mover read when it
started, e.g. a pipeline run at its start), and writes ``seq + 1`` create-only: two movers can never both
write the same ``seq``, so a lost race is a clear error and never a silent overwrite, and the log is the
history (``maas models alias NAME``).

A store written before the log existed has ``aliases/<alias>.json`` (``{"version": n}``): read as move 0.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

from maas.exceptions import ConflictError, RegistryError
from maas.registry.objects import Store

UNCHECKED: Any = object()  # a move that only requires the alias not to change while it is being written
_SEQ = re.compile(r"[0-9]{10}\.json")


def _load(store: Store, key: str) -> dict:
    raw = store.read_bytes(key)
    try:
        rec = json.loads(raw.decode()) if raw is not None else None
        if not isinstance(rec, dict) or not (rec.get("version") is None or isinstance(rec["version"], int)):
            raise ValueError("not an alias record")
        return rec
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{store.uri}/{key}: damaged alias record ({exc}); remove that file, or point the "
                            "alias again with `maas models alias`") from None


def _listing(store: Store, name: str) -> dict[str, list[tuple[int, str]]]:
    """{alias: [(seq, key), ...] in order} from one listing; no record is read."""
    base = f"models/{name}/aliases"
    found: dict[str, list[tuple[int, str]]] = {}
    for info in store.list(base):
        rest = info.key[len(base) + 1:]
        alias, _, leaf = rest.partition("/")
        if leaf and _SEQ.fullmatch(leaf):
            found.setdefault(alias, []).append((int(leaf[:-5]), info.key))
        elif not leaf and rest.endswith(".json") and ".tmp" not in rest:  # the older single-file form
            found.setdefault(rest[:-5], []).append((0, info.key))
    return {a: sorted(keys) for a, keys in sorted(found.items())}


def latest(store: Store, name: str) -> dict[str, dict]:
    """{alias: its newest move, with ``seq``}: one listing and one read per alias, however long the history
    (the alias watcher of every replica calls this every ``alias_poll_s``)."""
    return {a: {**_load(store, keys[-1][1]), "seq": keys[-1][0]} for a, keys in _listing(store, name).items()}


def read_logs(store: Store, name: str) -> dict[str, list[dict]]:
    """{alias: every move in order, each with ``seq``} (the history)."""
    return {a: [{**_load(store, key), "seq": seq} for seq, key in keys] for a, keys in _listing(store, name).items()}


def current(moves: list[dict]) -> Optional[int]:
    return moves[-1]["version"] if moves else None


def move(store: Store, name: str, alias: str, version: Optional[int], expected: Any, by: str,
         reason: Optional[str] = None) -> dict:
    """Append a move of ``alias`` to ``version`` (None: remove it) if it still points at ``expected``.

    Raises:
        RegistryError: the alias points elsewhere than ``expected``, or another move landed first.
    """
    last_move = latest(store, name).get(alias)
    moves = [last_move] if last_move else []
    now = current(moves)
    if expected is not UNCHECKED and now != expected:
        last = moves[-1] if moves else {}
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("at", 0)))
        raise ConflictError(
            f"{name}@{alias} points at {_or(now, 'nothing')}, not {_or(expected, 'nothing')} as this move expected "
            f"(moved by {last.get('by', '?')} at {when}); not overwriting it. To move it anyway: "
            f"maas models alias {name} {alias} {_or(version, '--delete')} --expect {_or(now, 'none')}")
    seq = (moves[-1]["seq"] if moves else 0) + 1
    record = {"version": version, "previous": now, "at": time.time(), "by": by}
    if reason:
        record["reason"] = reason
    if not store.create(f"models/{name}/aliases/{alias}/{seq:010d}.json", json.dumps(record).encode()):
        raise ConflictError(f"{name}@{alias} was moved by someone else while this move was being written; "
                            f"nothing was changed. See `maas models alias {name}` and try again")
    return {**record, "seq": seq}


def _or(version: Optional[int], instead: str) -> str:
    return instead if version is None else str(version)
