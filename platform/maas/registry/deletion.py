"""Deleting a version: a create-only tombstone beside its manifest.

The manifest stays (a version's number is never given to another one, and its lineage can still be read
by whoever named it as a parent); ``models/<name>/versions/<n>/deleted.json`` says who deleted it, when
and why. Reads leave a deleted version out (``list_versions``, the latest version) or refuse it by name,
and ``gc`` removes its files, since no live version names them.

A deletion and an alias move may race (two machines, one store): each writes first and then looks for the
other's write, so at least one of them sees the other, and the alias loses: a deletion that finds an alias
pointing at its version takes its tombstone back and fails; a move that finds a tombstone at its version
moves the alias back and fails. No alias is ever left at a deleted version.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional

from maas.exceptions import ConflictError, RegistryError
from maas.registry import aliases as alias_log

DELETED = "deleted.json"


def _key(name: str, version: int) -> str:
    return f"models/{name}/versions/{version}/{DELETED}"


def check_not_deleted(store, name: str, version: int, live: Callable[[str], list]) -> None:
    """Raise RegistryError naming who deleted ``name/version`` and when, if it was deleted."""
    raw = store.read_bytes(_key(name, version))
    if raw is None:
        return
    try:
        info = json.loads(raw.decode())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["at"])))
        said = f" on {when} by {info.get('by') or '?'}" + (f" ({info['reason']})" if info.get("reason") else "")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):  # a damaged tombstone still deletes
        said = ""
    raise RegistryError(f"{name}/{version} was deleted{said}; versions: {live(name) or 'none'}")


def _pointing(aliases_of: Callable[[str], dict], name: str, version: int) -> list[str]:
    return sorted(a for a, v in aliases_of(name).items() if v == version)


def delete(store, mv, aliases_of: Callable[[str], dict], by: str, reason: Optional[str]) -> None:
    """Write ``mv``'s tombstone, unless an alias points at it (before, or by a move that raced this one)."""
    name, version = mv.name, mv.version
    pointing = _pointing(aliases_of, name, version)
    if pointing:
        raise ConflictError(f"{mv.ref} is what {', '.join(f'{name}@{a}' for a in pointing)} points at; move the "
                            f"alias to another version first (maas models alias {name} {pointing[0]} VERSION), "
                            f"or remove it (maas models alias {name} {pointing[0]} --delete)")
    body = json.dumps({"at": time.time(), "by": by, "reason": reason.strip() if reason else None}).encode()
    if not store.create(_key(name, version), body):
        raise RegistryError(f"{mv.ref} is already deleted")
    pointing = _pointing(aliases_of, name, version)
    if pointing:
        store.delete_key(_key(name, version))
        raise RegistryError(f"{name}@{pointing[0]} was moved to {mv.ref} while it was being deleted; nothing was "
                            "deleted")


def undo_if_deleted(store, name: str, alias: str, move: dict) -> None:
    """After ``move`` put ``alias`` at a version: if that version was deleted meanwhile, move the alias back
    to where it was and raise RegistryError."""
    version = move["version"]
    if version is None or store.read_bytes(_key(name, version)) is None:
        return
    alias_log.move(store, name, alias, move["previous"], version, move["by"],
                   reason=f"undone: {name}/{version} was deleted while the alias moved to it")
    raise RegistryError(f"{name}/{version} was deleted while {name}@{alias} moved to it; the alias is back at "
                        f"{move['previous'] if move['previous'] is not None else 'nothing'}")
