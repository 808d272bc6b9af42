"""The private parts of Ray that maas uses (``maas.serve.ray_private``, the one module that touches them): each
is checked here, so a Ray upgrade that moves or changes one fails in this file, not in serving."""

import inspect
import os
import re
from pathlib import Path

import pytest

import maas
from maas.serve import ray_private
from maas.spec import LLMEngineSpec


def test_ray_serve_llm_private_parts_maas_relies_on_are_still_there():
    """maas moves VLLMEngine's blocking start off the replica's loop by overriding two of its private methods
    (and stops the AsyncLLM it made that way), frees the placement group its callback made, and loads adapters
    with ``DiskMultiplexConfig``: a Ray upgrade that changes any of them fails here, not in serving."""
    pytest.importorskip("ray.serve.llm")
    import inspect
    from types import SimpleNamespace

    from maas.serve.runtimes.vllm import adapter_config, off_loop_engine_class
    from maas.serve.runtimes.vllm_config import llm_config

    VLLMEngine = ray_private.vllm_engine_class()
    for name, params in ray_private.VLLM_ENGINE_OVERRIDES.items():
        assert list(inspect.signature(getattr(VLLMEngine, name)).parameters) == params, name
    start = inspect.getsource(VLLMEngine.start)
    assert "self._prepare_engine_config(" in start and "self._engine_client = self._start_async_llm_engine(" in start
    assert "callback.ctx" in start
    config = llm_config("/store", SimpleNamespace(name="tiny", ref="tiny/1", version=1, signature={}),
                        LLMEngineSpec(), source="/folder")
    engine = off_loop_engine_class()(config)
    assert engine._engine_client is None and issubclass(type(engine), VLLMEngine)
    engine.maas_stop()  # nothing made yet: a no-op, and a later start stops what it makes
    assert engine._maas_stopped
    assert config.model_loading_config.model_source == "/folder" and config._callback_instance is None
    server = SimpleNamespace(_llm_config=config)  # LLMServer keeps its config there; no engine started yet
    assert ray_private.engine_placement_group(server) is None
    disk = adapter_config("support/2", "/adapters/support", 1)
    assert disk.model_id == "support/2" and disk.local_path == "/adapters/support"
    tokenize, chat, detokenize = ray_private.tokenization_requests()  # /tokenize and /detokenize's bodies
    assert tokenize.model_validate({"model": "m", "prompt": "w1"}).prompt == "w1"
    assert chat.model_validate({"model": "m", "messages": [{"role": "user", "content": "w1"}]}).messages
    assert detokenize.model_validate({"model": "m", "tokens": [1, 2]}).tokens == [1, 2]
    for name in ("tokenize", "detokenize"):  # what maas calls: an async generator of one answer
        assert inspect.isasyncgenfunction(getattr(VLLMEngine, name)), name
    assert "self._app_state = state" in start and "self._oai_serving_tokenization = " in start
    tokenization = object()
    engine._oai_serving_tokenization, engine._app_state = None, SimpleNamespace(serving_tokenization=tokenization)
    ray_private.adopt_tokenization(engine)  # vLLM's name for it, where Ray found nothing under its own
    assert engine._oai_serving_tokenization is tokenization


def test_serve_private_parts_maas_relies_on_are_still_there():
    """HAProxy's binary (maas runs it through its haproxy-bound script), the controller's name and namespace
    (is Serve running here?) and the global client's HTTP options (where Serve really listens)."""
    import ray
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    binary = ray_private.haproxy_binary()
    assert os.path.isfile(binary) and os.access(binary, os.X_OK)
    assert not ray.is_initialized() and ray_private.serve_controller_running() is False
    assert "raise_if_no_controller_running" in inspect.signature(_get_global_client).parameters
    assert isinstance(inspect.getattr_static(ServeControllerClient, "http_config"), property)
    source = inspect.getsource(ray_private)
    for private in ("ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE",
                    "ray.serve._private.haproxy import get_haproxy_binary",
                    "ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig"):
        assert private in source
    assert ray_private.serve_request_id() == ""  # outside a request; inside one, test_serve_http reads it back
    package = Path(maas.__file__).parent
    for module in package.rglob("*.py"):
        if module.name == "ray_private.py":
            continue
        text = module.read_text().replace("ray_private", "")
        assert not re.search(r"ray\.[\w.]*\._|from ray[\w.]* import _", text), module.relative_to(package)


def test_ray_s_log_monitor_reads_the_settings_maas_gives_it():
    """maas.runtime.LOG_MONITOR_ENV slows the log monitor's look for new worker log files through two environment
    variables that only Ray's log monitor reads, when its module loads: read back from a fresh process so that a
    Ray upgrade renaming either (and silently dropping the saving) fails here."""
    import json
    import subprocess
    import sys

    from maas.runtime import LOCAL_RAY_ENV, LOG_MONITOR_ENV

    probe = ("import json, ray._private.log_monitor as m; "
             "print(json.dumps([m.LOG_NAME_UPDATE_INTERVAL_S, m.RAY_LOG_MONITOR_MANY_FILES_THRESHOLD]))")
    env = {k: v for k, v in os.environ.items() if k not in LOG_MONITOR_ENV}
    defaults = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                         check=True).stdout)
    ours = json.loads(subprocess.run([sys.executable, "-c", probe], env={**env, **LOG_MONITOR_ENV},
                                     capture_output=True, text=True, check=True).stdout)
    assert defaults == [0.5, 1000] and ours == [2.0, 0]  # every 2 s, whatever the number of files
    assert LOG_MONITOR_ENV.items() <= LOCAL_RAY_ENV.items()  # the embedded Ray gets them too
