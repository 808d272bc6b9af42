"""The quality gates: a compressed variant may only be promoted when it stays close to its parent.
``check_accuracy_gate`` for classifiers (test accuracy), ``check_embedding_gate`` for sentence encoders
(cosine to the parent's vectors and STS-style rank correlation)."""

from __future__ import annotations

from maas.spec import EncoderGateSpec, LLMGateSpec


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
    variance = child.get("batch_variance", 0.0)
    if variance > gate.max_batch_variance:
        problems.append(f"not batch-invariant: a text's vector moves {variance:.1e} between alone and batched "
                        f"(> {gate.max_batch_variance:.0e})")
    if problems:
        return False, "; ".join(problems)
    return True, (f"mean cosine {child['cosine_mean']:.4f} >= {gate.min_cosine_mean}, min {child['cosine_min']:.4f}"
                  f" >= {gate.min_cosine_min}, STS drop {drop:+.4f} <= {gate.max_sts_drop}, batch variance "
                  f"{variance:.0e} <= {gate.max_batch_variance:.0e}")


def greedy_agreement(parent: list, child: list) -> float:
    """How much of the parent's greedy text a variant reproduces: per prompt, the share of the parent's tokens
    before the first one the variant changes, averaged over prompts (1.0: every continuation identical)."""
    shares = []
    for p, c in zip(parent, child):
        same = next((i for i, (a, b) in enumerate(zip(p, c)) if a != b), min(len(p), len(c)))
        shares.append(same / max(len(p), 1))
    return sum(shares) / max(len(shares), 1)


def check_llm_gate(parent: dict, child: dict, gate: LLMGateSpec) -> tuple[bool, str]:
    """(passed, reason) of a decoder variant: held-out perplexity (relative rise) and greedy agreement, both
    measured under vLLM; a variant vLLM could not run fails with vLLM's reason."""
    if "error" in child:
        return False, f"vLLM could not run it: {child['error']}"
    rise = child["perplexity"] / parent["perplexity"] - 1
    problems = []
    if rise > gate.max_perplexity_increase + 1e-12:
        problems.append(f"perplexity {child['perplexity']:.3f} is {rise:+.2%} over the parent's "
                        f"{parent['perplexity']:.3f} (> {gate.max_perplexity_increase:.2%})")
    if child["greedy_agreement"] < gate.min_greedy_agreement:
        problems.append(f"greedy agreement {child['greedy_agreement']:.3f} < {gate.min_greedy_agreement}")
    if problems:
        return False, "; ".join(problems)
    return True, (f"perplexity {rise:+.2%} <= {gate.max_perplexity_increase:.2%}, greedy agreement "
                  f"{child['greedy_agreement']:.3f} >= {gate.min_greedy_agreement}")
