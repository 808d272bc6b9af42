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
                    signature: dict, lineage: dict, method: str, parent: str, passed: bool, reason: str,
                    champion: tuple[bool, str] = (True, "")) -> dict:
    """Publish a variant measured against ``parent``: ``ready`` when it passed its gate, ``rejected`` (never
    aliased, never served) when not, ``candidate`` when it passed but ``champion`` (holds its own against the
    version serving traffic, why) says it did not. Returns its record {method, runtime, ref, metrics, gate,
    passed, status}."""
    holds, versus = champion
    status = status_of(passed, holds)
    why = "; ".join(x for x in (reason, versus) if x)
    mv = registry.publish(name, files, runtime=runtime, task=task, metrics=metrics, signature=signature,
                          lineage={**lineage, "method": method, "parent": parent,
                                   "gate": {"passed": passed, "reason": reason}, **champion_lineage(holds, versus)},
                          status=status, description=why)
    return {"method": method, "runtime": runtime, "ref": mv.ref, "metrics": metrics,
            "gate": {"ready": "pass: ", "rejected": "REJECTED: ", "candidate": "CANDIDATE: "}[status] + why,
            "passed": passed, "status": status}


def status_of(passed: bool, holds: bool) -> str:
    """A new version's registry status: its gate first, then whether it held its own against the champion."""
    return "rejected" if not passed else "ready" if holds else "candidate"


def champion_lineage(holds: bool, why: str) -> dict:
    """What a version's lineage keeps of its comparison with the champion (nothing when there was none)."""
    return {"champion": {"held": holds, "reason": why}} if why else {}


def promotable(record: dict) -> bool:
    """Passed its gate and held its own against the champion (a record without a status predates that)."""
    return record["passed"] and record.get("status", "ready") == "ready"


def speed_range(metrics: dict, key: str) -> tuple[float, float, float]:
    """(lowest, median, highest) of the speed figure ``key``: a figure measured in repeated windows keeps its
    extremes as ``<key>_min`` / ``<key>_max``; one measured once is its own range."""
    median = float(metrics.get(key, 0.0))
    return float(metrics.get(f"{key}_min", median)), median, float(metrics.get(f"{key}_max", median))


def select(records: list[dict], how: str, speed: str) -> dict:
    """The gate-passing record to promote. ``smallest``: fewest bytes, then fastest. ``fastest``: the highest
    median of the metric ``speed``, but a version counts as faster only where its slowest window beat the
    other's fastest one (their ranges do not overlap); versions tied with the fastest in that sense go to the
    smallest, so equivalent versions do not trade the alias on a machine's noise from run to run."""
    passing = [r for r in records if promotable(r)]
    if not passing:
        raise RegistryError("no version passed its quality gate; nothing to promote")

    def median(r: dict) -> float:
        return speed_range(r["metrics"], speed)[1]

    if how == "fastest":
        top_low = speed_range(max(passing, key=median)["metrics"], speed)[0]
        tied = [r for r in passing if speed_range(r["metrics"], speed)[2] >= top_low]
        return min(tied, key=lambda r: (r["metrics"]["size_bytes"], -median(r)))
    return min(passing, key=lambda r: (r["metrics"]["size_bytes"], -median(r)))


def alias_target(store: str, name: str, alias: str) -> Optional[int]:
    """Where ``<name>@<alias>`` points now (None: nowhere yet). A run reads it when it starts and promotes
    only if it still points there: a slower, older run never demotes what a newer one promoted."""
    try:
        return Registry(store).aliases(name).get(alias)
    except RegistryError:
        return None


def promote(store: str, alias: str, records: list[dict], how: str, speed: str, *,
            expected: Any = UNCHECKED, by: Optional[str] = None) -> Optional[dict]:
    """Point ``<model>@<alias>`` at ``select(records, how, speed)`` if the alias still points at
    ``expected`` (what the run read at its start); returns that record, or None when every version that
    passed its gate is a candidate (none held its own against the champion): the alias stays.

    Raises:
        RegistryError: no version passed its gate; the alias moved meanwhile (the message says by whom and how
            to move it anyway).
    """
    if not any(promotable(r) for r in records) and any(r["passed"] for r in records):
        return None
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
    return [{"method": v["method"], "ref": v["ref"], "passed": v["passed"], "status": v.get("status", "ready"),
             "gate": v.get("gate"), "metrics": v["metrics"]} for v in variants]


def job_deploy(spec, opts: dict, progress: Progress) -> dict:
    """The deploy stage of every kind: serve a registered version; the application outlives the job."""
    ref = opts.get("ref") or f"{spec.model.name}@{spec.deploy.alias}"
    progress("serve", f"{ref} on {spec.deploy.host}:{spec.deploy.port}")
    return {"ref": ref, "endpoint": deploy_model(spec, ref, progress)}
