"""Steps every pipeline kind shares, written once: run ids, stage timing, publishing a gated variant,
promoting the fastest (or smallest) passing one, and serving ``<model>@<alias>``."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Optional

from maas.exceptions import RegistryError
from maas.registry import UNCHECKED, Registry

Progress = Callable[[str, str], None]


def noop(stage: str, detail: str = "") -> None:
    pass


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class Laps:
    """Seconds per stage: ``lap(stage, detail)`` books the time since the previous lap to ``stage`` (adding
    up when a stage laps more than once) and reports ``detail`` through ``progress``."""

    def __init__(self, progress: Progress = noop):
        self.progress = progress
        self.seconds: dict = {}
        self._clock = time.perf_counter()

    def lap(self, stage: str, detail: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0) + now - self._clock, 2)
        self._clock = now
        self.progress(stage, detail)


def publish_variant(registry: Registry, name: str, files: dict, *, runtime: str, task: str, metrics: dict,
                    signature: dict, lineage: dict, method: str, parent: str, passed: bool, reason: str) -> dict:
    """Publish a variant measured against ``parent``: ``ready`` when it passed its gate, ``rejected`` (never
    aliased, never served) when not. Returns its record {method, runtime, ref, metrics, gate, passed}."""
    mv = registry.publish(name, files, runtime=runtime, task=task, metrics=metrics, signature=signature,
                          lineage={**lineage, "method": method, "parent": parent,
                                   "gate": {"passed": passed, "reason": reason}},
                          status="ready" if passed else "rejected", description=reason)
    return {"method": method, "runtime": runtime, "ref": mv.ref, "metrics": metrics,
            "gate": ("pass: " if passed else "REJECTED: ") + reason, "passed": passed}


def select(records: list[dict], how: str, speed: Callable[[dict], float]) -> dict:
    """The gate-passing record to promote: ``fastest`` (highest ``speed(metrics)``, then smallest) or
    ``smallest`` (fewest bytes, then fastest)."""
    passing = [r for r in records if r["passed"]]
    if not passing:
        raise RegistryError("no version passed its quality gate; nothing to promote")
    if how == "fastest":
        return max(passing, key=lambda r: (speed(r["metrics"]), -r["metrics"]["size_bytes"]))
    return min(passing, key=lambda r: (r["metrics"]["size_bytes"], -speed(r["metrics"])))


def alias_target(store: str, name: str, alias: str) -> Optional[int]:
    """Where ``<name>@<alias>`` points now (None: nowhere yet). A run reads it when it starts and promotes
    only if it still points there: a slower, older run never demotes what a newer one promoted."""
    try:
        return Registry(store).aliases(name).get(alias)
    except RegistryError:
        return None


def promote(store: str, alias: str, records: list[dict], how: str, speed: Callable[[dict], float], *,
            expected: Any = UNCHECKED, by: Optional[str] = None) -> dict:
    """Point ``<model>@<alias>`` at ``select(records, how, speed)`` if the alias still points at
    ``expected`` (what the run read at its start); returns that record.

    Raises:
        RegistryError: the alias moved meanwhile (the message says by whom and how to move it anyway).
    """
    chosen = select(records, how, speed)
    name, version = chosen["ref"].split("/")
    Registry(store).set_alias(name, alias, int(version), expected=expected, by=by)
    return chosen


def deploy_model(spec, ref: Optional[str] = None, progress: Progress = noop) -> str:
    """Serve ``ref`` (default ``<model>@<deploy.alias>``) with the spec's deploy settings; returns the URL once
    it serves (what the replicas are doing meanwhile, e.g. a vLLM engine loading, goes to ``progress``)."""
    from maas.serve import deploy

    return deploy(Registry(spec.store).location, ref or f"{spec.model.name}@{spec.deploy.alias}", spec.deploy,
                  progress=lambda line: progress("serve", line))


def serve_at_end(spec, serve: Optional[bool], laps: Laps) -> Optional[str]:
    """The last stage of every kind: serve ``<model>@<alias>`` when asked (default: ``deploy.enabled``)."""
    if not (spec.deploy.enabled if serve is None else serve):
        return None
    laps.progress("serve", f"{spec.model.name}@{spec.deploy.alias} on {spec.deploy.host}:{spec.deploy.port}")
    endpoint = deploy_model(spec, progress=laps.progress)
    laps.lap("serve", endpoint)
    return endpoint


def variants_summary(variants: list[dict]) -> list[dict]:
    """What a job's result line says of each version: method, reference, gate, figures."""
    return [{"method": v["method"], "ref": v["ref"], "passed": v["passed"], "gate": v.get("gate"),
             "metrics": v["metrics"]} for v in variants]


def job_deploy(spec, opts: dict, progress: Progress) -> dict:
    """The deploy stage of every kind: serve a registered version; the application outlives the job."""
    ref = opts.get("ref") or f"{spec.model.name}@{spec.deploy.alias}"
    progress("serve", f"{ref} on {spec.deploy.host}:{spec.deploy.port}")
    return {"ref": ref, "endpoint": deploy_model(spec, ref, progress)}
