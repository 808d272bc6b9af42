"""Pipeline kinds: one module per kind, one table kind -> implementation. Dispatch on ``kind`` happens here.

Every kind's module (``maas.pipelines.<kind>``) provides:

- ``SPEC``: its spec class (``maas.spec``), the one ``kind: <name>`` in a spec file selects;
- ``run(spec, *, serve=None, run_id=None, progress=noop)``: every stage, in order; returns a result object
  with ``to_dict()``, ``stage_seconds``, ``promoted_ref`` and ``endpoint``;
- ``summary(result, spec)``: the table ``maas run`` prints at the end (a pipeline job puts it in its result
  line, and ``maas submit`` / ``maas logs --follow`` print it);
- ``try_it(result, spec)``: (the endpoint, a command that calls it as printed);
- ``JOB_STAGES``: {stage: fn(spec, options, progress) -> result fields} for the Ray job entrypoints
  (``jobs/<stage>.py``); the stages a kind lists are the only ones it can be submitted as.

Shared steps (run ids, stage timing, publishing a gated variant, promoting the fastest passing one, serving)
live in ``maas.pipelines.base``. A new kind is one module with those five names plus one row in ``KINDS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Union

from maas.exceptions import JobError

STAGES = ("pipeline", "preprocess", "train", "compress", "deploy")


@dataclass(frozen=True)
class Kind:
    name: str
    module: str                # imported on first use: the table stays light for the CLI and the SDK
    stages: tuple[str, ...]    # job stages, in STAGES order
    what: str                  # one line for help texts

    def implementation(self) -> ModuleType:
        return importlib.import_module(self.module)


KINDS = {k.name: k for k in (
    Kind("classifier", "maas.pipelines.classifier", ("pipeline", "preprocess", "train", "compress", "deploy"),
         "your tabular, image or text data -> a trained classifier, int8-compressed and gated"),
    Kind("encoder", "maas.pipelines.encoder", ("pipeline", "compress", "deploy"),
         "the packaged MiniLM sentence encoder -> variants measured, gated, the fastest passing one served"),
    Kind("lm", "maas.pipelines.lm", ("pipeline", "compress", "deploy"),
         "text -> BPE tokenizer -> transformers Llama (DDP/FSDP2) -> Hugging Face folder (quantized variants, "
         "gated) -> vLLM"),
    Kind("llm", "maas.pipelines.llm", ("pipeline", "deploy"),
         "a Hugging Face causal LM -> the registry -> vLLM engines (Ray Serve LLM) behind OpenAI routes"),
)}


def kind_of(spec_or_name: Union[str, object]) -> Kind:
    """The ``Kind`` of a spec (its ``kind`` field) or of a kind name."""
    name = spec_or_name if isinstance(spec_or_name, str) else getattr(spec_or_name, "kind", "classifier")
    try:
        return KINDS[name]
    except KeyError:
        raise JobError(f"unknown pipeline kind {name!r}; kinds: {', '.join(KINDS)}") from None


def implementation(spec_or_name: Union[str, object]) -> ModuleType:
    """The module that runs a spec of this kind (``run``, ``summary``, ``try_it``, ``JOB_STAGES``)."""
    return kind_of(spec_or_name).implementation()


def check_stage(spec, stage: str) -> None:
    """Refuse, with the stages that would work, a job stage this spec's kind cannot run.

    Raises:
        JobError: unknown stage, or one the kind does not have (e.g. ``preprocess`` for ``kind: lm``,
        whose data and training run inside its pipeline job).
    """
    if stage not in STAGES:
        raise JobError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    kind = kind_of(spec)
    if stage not in kind.stages:
        raise JobError(f"a kind={kind.name} spec runs as stage {' or '.join(kind.stages)}, not {stage!r} "
                       "(its data and training run inside the pipeline job)")


__all__ = ["KINDS", "STAGES", "Kind", "check_stage", "implementation", "kind_of"]
