"""Model builders by name: ``model.json``'s ``arch`` picks one, the rest of it are the builder's arguments."""

from __future__ import annotations

from torch import nn

from maas.exceptions import MaasError
from maas.models.encoder import build_encoder, build_text_classifier
from maas.models.hf_lm import build_hf_causal_lm
from maas.models.llama import build_llama
from maas.models.mlp import build_mlp

BUILDERS = {"mlp": build_mlp, "encoder": build_encoder, "llama": build_llama, "hf_causal_lm": build_hf_causal_lm,
            "text_classifier": build_text_classifier}


def build_model(config: dict) -> nn.Module:
    """Build a model from its JSON config ({"arch": ..., builder kwargs ...})."""
    kwargs = dict(config)
    arch = kwargs.pop("arch", None)
    if arch not in BUILDERS:
        raise MaasError(f"unknown model arch {arch!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[arch](**kwargs)
