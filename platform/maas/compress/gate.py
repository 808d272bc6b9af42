"""The quality gates: a compressed variant may only be promoted when it stays close to its parent.
``check_accuracy_gate`` for classifiers (test accuracy), ``check_embedding_gate`` for sentence encoders
(cosine to the parent's vectors and STS-style rank correlation)."""

from __future__ import annotations

from maas.spec import EncoderGateSpec


def check_accuracy_gate(parent: dict, child: dict, max_accuracy_drop: float) -> tuple[bool, str]:
    """(passed, reason) of a classifier variant. Compares test accuracy, absolute points: 0.01 means one point."""
    drop = parent["test_accuracy"] - child["test_accuracy"]
    if drop > max_accuracy_drop + 1e-12:
        return False, (f"test accuracy {child['test_accuracy']:.4f} is {drop * 100:.2f} points below the parent's "
                       f"{parent['test_accuracy']:.4f}; compress.max_accuracy_drop={max_accuracy_drop}")
    return True, f"within {max_accuracy_drop * 100:.2f} points of the parent (drop {drop * 100:+.2f})"


def check_embedding_gate(parent: dict, child: dict, gate: EncoderGateSpec) -> tuple[bool, str]:
    """(passed, reason) of an encoder variant against its parent's figures."""
    problems = []
    if child["cosine_mean"] < gate.min_cosine_mean:
        problems.append(f"mean cosine {child['cosine_mean']:.4f} < {gate.min_cosine_mean}")
    if child["cosine_min"] < gate.min_cosine_min:
        problems.append(f"min cosine {child['cosine_min']:.4f} < {gate.min_cosine_min}")
    drop = parent["sts_spearman"] - child["sts_spearman"]
    if drop > gate.max_sts_drop + 1e-12:
        problems.append(f"STS rank correlation fell {drop:.4f} (> {gate.max_sts_drop})")
    if problems:
        return False, "; ".join(problems)
    return True, (f"mean cosine {child['cosine_mean']:.4f} >= {gate.min_cosine_mean}, min {child['cosine_min']:.4f}"
                  f" >= {gate.min_cosine_min}, STS drop {drop:+.4f} <= {gate.max_sts_drop}")
