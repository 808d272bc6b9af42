"""Runtimes: what computes a loaded version's answers inside a serving replica.

In-process predictors (ONNX Runtime, torch, the sentence encoder: ``maas.models``) answer the Open Inference
Protocol and embeddings; vLLM engines (``maas.serve.runtimes.vllm``) answer the OpenAI generation routes. Both
live in the replica that takes the HTTP request, so a request crosses one Python process between the client's
connection and the model."""

# runtimes whose versions a vLLM engine serves (the OpenAI generation routes); every other runtime is an
# in-process predictor. The one place that tells them apart by name.
ENGINE_RUNTIMES = frozenset({"vllm"})


def on_engine(version_or_runtime) -> bool:
    """Whether a registry version (or a runtime's name) is served by an engine rather than a predictor."""
    runtime = version_or_runtime if isinstance(version_or_runtime, str) else version_or_runtime.runtime
    return runtime in ENGINE_RUNTIMES
