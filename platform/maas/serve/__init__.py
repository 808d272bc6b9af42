"""Serving: Ray Serve applications over Open Inference Protocol v2 and OpenAI-style routes.

router (the route table, pure) -> app (the deployment: routing, accounting, batching) -> oip_handlers /
openai_handlers (one module per protocol; parsing and shapes in oip) -> hosting (served models and their
loaded versions, alias watcher, pinned cache) -> registry. deploy builds and starts applications."""

from maas.serve.deploy import build_app, deploy
from maas.serve.hosting import VERSION_HEADER

__all__ = ["VERSION_HEADER", "build_app", "deploy"]
