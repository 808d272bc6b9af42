"""The large-language-model kind's spec (``kind: llm``): a Hugging Face causal LM brought into the registry
and served by vLLM engines through Ray Serve LLM."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator

from maas.spec.common import _NAME_PATTERN, DeploySpec, InputPath, _Pipeline, _Strict

RANDOM_SIZES = ("tiny",)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # ORG/NAME, as the Hub names models


def hub_hint(source: str) -> str:
    """What to do when ``source`` names a Hugging Face Hub model (``ORG/NAME`` that is no folder here, or
    ``hf://ORG/NAME``) rather than files; "" when it does not."""
    if not (source.startswith("hf://") or (HUB_ID.fullmatch(source) and not os.path.exists(source))):
        return ""
    hub_id = source.removeprefix("hf://")
    return (f"{source!r} is no folder here and maas does not download from the Hugging Face Hub: models are "
            f"served from checksummed registry files. Where the Hub is reachable: `huggingface-cli download "
            f"{hub_id} --local-dir {hub_id.rsplit('/', 1)[-1]}`, then give that folder (or copy it to object "
            "storage and give its s3:// URI), or import it once: `maas models import FOLDER --name NAME`")


class LLMModelSpec(_Strict):
    name: str = Field(..., pattern=_NAME_PATTERN, description="Registry name of the model (lower case).")
    source: str = Field(..., description="A Hugging Face causal-LM folder (config.json, safetensors weights, "
                                         "tokenizer.json): a local path or a pyarrow.fs URI (s3://, gs://, ...); "
                                         "or 'random:tiny', a random tiny Llama built here (the demo: nothing "
                                         "is downloaded).")
    seed: int = Field(0, description="source=random:*: the seed of the random weights.")

    @field_validator("source")
    @classmethod
    def _known_random(cls, value: str) -> str:
        if value.startswith("random:") and value[len("random:"):] not in RANDOM_SIZES:
            raise ValueError(f"random models are {', '.join('random:' + s for s in RANDOM_SIZES)}")
        if not value.strip():
            raise ValueError("give a folder path or URI of a Hugging Face causal LM, or random:tiny")
        hint = hub_hint(value)
        if hint:
            raise ValueError(hint)
        return value


class LLMPipelineSpec(_Pipeline):
    """A Hugging Face causal LM: imported (every file checksummed) -> alias -> vLLM engines behind maas."""

    kind: Literal["llm"] = Field(..., description="'llm' for this pipeline.")
    store: str = Field(".maas", description="Registry and run store: a local path or a pyarrow.fs URI.")
    model: LLMModelSpec = Field(..., description="Which model, from where.")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="How to serve it (deploy.llm: the "
                                                                       "engines' placement and limits).")

    def inputs(self) -> list[InputPath]:
        source = self.model.source
        return [] if source.startswith("random:") else [InputPath("model.source", source, "model")]
