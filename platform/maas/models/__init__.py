"""Model builders by name, artifact (de)serialisation without pickle, signatures, the task vocabulary and
inference predictors.

Names are loaded on first use (PEP 562): the registry and the CLI read the task vocabulary
(``maas.models.tasks``) without importing torch."""

from __future__ import annotations

import importlib

_WHERE = {
    "BUILDERS": "builders", "build_model": "builders",
    "build_encoder": "encoder", "build_text_classifier": "encoder", "encoder_signature": "encoder",
    "text_classifier_signature": "encoder", "build_llama": "llama", "build_mlp": "mlp", "classifier_signature": "mlp",
    "make_tiny_llama": "hf_tiny", "TASKS": "tasks", "Task": "tasks", "load_predictor": "tasks",
    "task_from_signature": "tasks",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'maas.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"maas.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
