"""Readable views of the registry: versions selected and sorted, and one version summarised.

What ``maas models list`` and ``maas models show`` print, as SDK calls first: ``select`` filters and sorts
versions, ``summary`` turns a manifest into what a reader asks of a version (what it is, whether it may
serve and why, its headline figures, where it came from, what is in it), leaving out what only machines
read (the feature list twice, every epoch, checksums in full, Unix times). ``--json`` keeps the manifest.
"""

from __future__ import annotations

import time
from typing import Optional

from maas.exceptions import NotFoundError, RegistryError
from maas.registry.model_version import ModelVersion

# the figure a version is known by, in this order of preference (classifiers, LMs, encoders)
HEADLINE = ("test_accuracy", "perplexity", "cosine_mean", "val_perplexity", "val_loss")
SORTS = ("name", "created", "size", "status")
STATUSES = ("ready", "candidate", "rejected")


def headline(mv: ModelVersion) -> Optional[tuple[str, float]]:
    """(name, value) of the version's headline figure, or None when it has none of ``HEADLINE``."""
    for key in HEADLINE:
        value = mv.metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None


def select(registry, name: Optional[str] = None, *, status: Optional[str] = None, alias: Optional[str] = None,
           sort: str = "name", reverse: bool = False, limit: Optional[int] = None) -> list[ModelVersion]:
    """The versions of ``name`` (every model when None) with ``status`` and holding ``alias``, sorted by
    ``sort`` (``name``: model then version; ``created``; ``size``; ``status``; or a metric's name, versions
    without it last), at most ``limit`` of them.

    Raises:
        RegistryError: an unknown model, status or sort key, or a limit under 1.

    Example:
        >>> select(Registry(".maas"), "digits", status="ready", sort="created", reverse=True, limit=5)
    """
    if status is not None and status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    if limit is not None and limit < 1:
        raise RegistryError(f"--limit must be at least 1, got {limit}")
    names = registry.list_models() if name is None else [name]
    if name is not None and name not in registry.list_models():
        raise NotFoundError(f"no model named {name!r} in {registry.location} (see `maas models list`)")
    versions = [mv for n in names for mv in registry.list_versions(n)
                if (status is None or mv.status == status) and (alias is None or alias in mv.aliases)]
    return _sorted(versions, sort, reverse)[:limit]


def _sorted(versions: list[ModelVersion], sort: str, reverse: bool) -> list[ModelVersion]:
    keys = {"name": lambda mv: (mv.name, mv.version), "created": lambda mv: mv.created_at,
            "size": lambda mv: mv.size_bytes, "status": lambda mv: (STATUSES.index(mv.status), mv.name, mv.version)}
    if sort in keys:
        return sorted(versions, key=keys[sort], reverse=reverse)
    if not any(sort in mv.metrics for mv in versions):
        known = sorted({k for mv in versions for k, v in mv.metrics.items() if isinstance(v, (int, float))})
        raise RegistryError(f"cannot sort by {sort!r}: use {', '.join(SORTS)} or a metric the versions have "
                            f"({', '.join(known) or 'none'})")
    have = [mv for mv in versions if isinstance(mv.metrics.get(sort), (int, float))]
    return sorted(have, key=lambda mv: mv.metrics[sort], reverse=reverse) + \
        [mv for mv in versions if mv not in have]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _figure(value) -> object:
    """A metric as a reader takes it: numbers rounded, a per-epoch history as its length and last value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        return value if not isinstance(value, dict) else f"{{{len(value)} entries}}"
    if isinstance(value, list):
        last = value[-1] if value else None
        return f"{len(value)} values, last {_figure(last)}" if value else "[]"
    return value if isinstance(value, int) else float(f"{value:.6g}")


def summary(mv: ModelVersion) -> dict:
    """What a reader asks of a version: identity, whether it may serve and why, figures, origin, contents.

    Example:
        >>> summary(Registry(".maas").resolve("digits@production"))["gate"]
        'passed: within 1.00 points of the parent (drop +0.00)'
    """
    lineage = mv.lineage
    gate = lineage.get("gate") or {}
    champion = lineage.get("champion") or {}
    counts = lineage.get("data_counts") or {}
    out = {"ref": mv.ref, "status": mv.status, "aliases": mv.aliases, "task": mv.task, "runtime": mv.runtime,
           "method": lineage.get("method"), "created": _when(mv.created_at), "parent": lineage.get("parent"),
           "gate": (("passed: " if gate.get("passed") else "failed: ") + str(gate.get("reason") or "")) if gate
           else None,
           "champion": (("held: " if champion.get("held") else "did not hold: ") + str(champion.get("reason")))
           if champion else None,
           "why": mv.description if mv.description and mv.description not in (gate.get("reason"),
                                                                               champion.get("reason")) else None,
           "metrics": {k: _figure(v) for k, v in sorted(mv.metrics.items())},
           "data": _data(counts, lineage),
           "run": {k: str(lineage[k])[:12] if k == "spec_hash" else lineage[k] for k in ("run_id", "spec_hash", "kind")
                   if lineage.get(k)} or None,
           "signature": _signature(mv.signature),
           "files": {n: {"size": f.get("size"), "sha256": str(f.get("sha256"))[:12]} for n, f in mv.files.items()},
           "size_bytes": mv.size_bytes}
    return {k: v for k, v in out.items() if v not in (None, {}, [])} | {"aliases": mv.aliases}


def _data(counts: dict, lineage: dict) -> Optional[dict]:
    if not counts and not lineage.get("data_fingerprint"):
        return None
    out = {k: counts[k] for k in ("rows_in", "rows_ok", "rows_rejected") if k in counts}
    if counts.get("splits"):
        out["splits"] = counts["splits"]
    if lineage.get("data_fingerprint"):
        out["fingerprint"] = str(lineage["data_fingerprint"])[:12]
    return out


def _signature(sig: dict) -> Optional[dict]:
    if not sig:
        return None
    def tensors(key: str) -> list[str]:
        return [f"{t.get('name')} {t.get('datatype')} {t.get('shape')}" for t in sig.get(key) or []
                if isinstance(t, dict)]
    out = {"inputs": tensors("inputs"), "outputs": tensors("outputs")}
    for key in ("classes", "features"):
        if isinstance(sig.get(key), list):
            out[key] = len(sig[key])
    for key in ("format", "architecture", "base"):
        if sig.get(key):
            out[key] = sig[key]
    return {k: v for k, v in out.items() if v}
