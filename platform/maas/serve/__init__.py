"""Serving: Ray Serve applications over Open Inference Protocol v2."""

from maas.serve.app import VERSION_HEADER, build_app, deploy

__all__ = ["VERSION_HEADER", "build_app", "deploy"]
