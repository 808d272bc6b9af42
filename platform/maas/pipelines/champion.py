"""Champion/challenger for classifiers: before ``deploy.alias`` moves, the version it points at now (the
champion) is evaluated on the new run's own test rows, with its own artifact and runtime, and every new
version must come within ``eval.max_accuracy_drop`` of it; one that does not is published as ``candidate``
and the alias stays. The champion's stored metrics are never reused: they came from other rows."""

from __future__ import annotations

from typing import Optional

from maas.compress.evaluate import accuracy
from maas.models import load_predictor
from maas.registry import Registry

SAME = ("features", "classes", "encoders")  # what must agree for both to read the same rows the same way


def evaluate_champion(registry: Registry, name: str, version: Optional[int], signature: dict, x, y) -> Optional[dict]:
    """{ref, comparable, test_accuracy | why} of ``name/version`` on the rows (x, y) of this run, or None when
    the model has no champion (its first version). A champion whose inputs or classes differ from this run's
    (another schema, other categories) cannot read these rows: it is ``comparable: False`` with the reason."""
    if version is None:
        return None
    mv = registry.get_version(name, version)
    differ = [k for k in SAME if mv.signature.get(k) != signature.get(k)]
    if differ:
        return {"ref": mv.ref, "comparable": False,
                "why": f"its {' and '.join(differ)} differ from this run's, so it cannot be scored on these rows"}
    folder, _ = registry.fetch(mv.ref)
    predictor = load_predictor(folder, mv.runtime, mv.task)
    return {"ref": mv.ref, "comparable": True, "test_accuracy": accuracy(predictor, x, y)}


def versus(metrics: dict, champion: Optional[dict], max_drop: float) -> tuple[bool, str]:
    """(holds its own, why) for a version with ``metrics`` against ``champion`` (``evaluate_champion``)."""
    if champion is None:
        return True, ""
    if not champion["comparable"]:
        return True, f"champion {champion['ref']} not compared: {champion['why']}"
    mine, theirs = metrics["test_accuracy"], champion["test_accuracy"]
    if theirs - mine > max_drop + 1e-12:
        return False, (f"{mine:.4f} is {(theirs - mine) * 100:.2f} points below champion {champion['ref']}'s "
                       f"{theirs:.4f} on the same rows (eval.max_accuracy_drop {max_drop:g})")
    return True, f"vs champion {champion['ref']}: {mine:.4f} against its {theirs:.4f} on the same rows"

