"""Runtimes: what computes a loaded version's answers inside a serving replica.

In-process predictors (ONNX Runtime, torch, the sentence encoder: ``maas.models``) answer the Open Inference
Protocol and embeddings; vLLM engines (``maas.serve.runtimes.vllm``) answer the OpenAI generation routes. Both
live in the replica that takes the HTTP request, so a request crosses one Python process between the client's
connection and the model."""
