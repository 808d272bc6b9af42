"""Serving: Ray Serve applications over Open Inference Protocol v2 and OpenAI-style routes.

routes (the route table, pure) -> app (the deployment: routing, accounting, batching) -> protocols/oip and
protocols/openai (one package per protocol, on errors and tenancy, which every protocol shares) -> hosting
(served models and their loaded versions, alias watcher, pinned cache) and runtimes (in-process predictors, vLLM
engines) -> registry. deploy builds and starts applications."""

from maas.serve.deploy import build_app, deploy
from maas.serve.hosting import VERSION_HEADER

__all__ = ["VERSION_HEADER", "build_app", "deploy"]
