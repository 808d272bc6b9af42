"""The quality gate: a compressed variant may only be promoted when it stays close to its parent."""

from __future__ import annotations


def check_gate(parent: dict, child: dict, max_accuracy_drop: float) -> tuple[bool, str]:
    """(passed, reason). Compares test accuracy, absolute points: 0.01 means one point."""
    drop = parent["test_accuracy"] - child["test_accuracy"]
    if drop > max_accuracy_drop + 1e-12:
        return False, (f"test accuracy {child['test_accuracy']:.4f} is {drop * 100:.2f} points below the parent's "
                       f"{parent['test_accuracy']:.4f}; compress.max_accuracy_drop={max_accuracy_drop}")
    return True, f"within {max_accuracy_drop * 100:.2f} points of the parent (drop {drop * 100:+.2f})"
