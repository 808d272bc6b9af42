"""The pure parts of LLM serving: request checks before the engine, how a stream is passed on and accounted,
the Ray Serve LLM internals the in-replica engines rely on, engine placement from the spec, the `kind: llm`
spec, shared-memory clean-up."""

from __future__ import annotations

import asyncio
import os

import pytest

from maas.exceptions import SpecError
from maas.serve.errors import ProtocolError
from maas.spec import LLMEngineSpec, spec_from_dict


def test_caps_and_message_shapes_are_checked_before_the_engine():
    from maas.serve.protocols.openai.generation import _check_caps, _check_messages

    spec = LLMEngineSpec(max_tokens=100, max_n=2)
    _check_caps({"n": 2, "max_tokens": 100, "best_of": 1, "seed": 2 ** 63 - 1, "stop": ["\n"] * 16}, spec)
    for req, field in (({"n": 3}, "'n' is 3"), ({"best_of": 9}, "'best_of' is 9"),
                       ({"max_tokens": 101}, "'max_tokens' is 101"), ({"max_completion_tokens": 500}, "max_comp"),
                       ({"max_tokens": 10 ** 400}, "'max_tokens' is out of range"),
                       ({"seed": -10 ** 400}, "'seed' is out of range"), ({"top_k": 2 ** 63}, "'top_k' is out"),
                       ({"stop": ["x"] * 17}, "'stop' takes at most 16"), ({"stop": "y" * 257}, "'stop'"),
                       ({"stop": [1]}, "'stop'")):
        with pytest.raises(ProtocolError, match=field) as err:
            _check_caps(req, spec)
        assert err.value.status == 400
    _check_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text",
                                                                                              "text": "hi"}]},
                     {"role": "assistant", "content": None}], spec)
    for messages, where in (([], "non-empty"), ("hi", "non-empty"), ([5], r"messages\[0\]"),
                            ([{"role": "user", "content": "a"}, {"role": "root", "content": "b"}],
                             r"messages\[1\]\.role is 'root'"),
                            ([{"content": "a"}], "role is None"),
                            ([{"role": "user", "content": {"x": 1}}], r"messages\[0\]\.content")):
        with pytest.raises(ProtocolError, match=where):
            _check_messages(messages, spec)


def test_a_requests_work_is_bounded_before_the_engine():
    """Sequences (prompts x n), forced lengths (ignore_eos, min_tokens: opt-in), remote media (only from the
    hosts the deployment names: the engine would fetch any URL, a cloud metadata address included); a request
    with no max_tokens gets the cap from the engine (vLLM's max_new_tokens override), not the context's rest."""
    from types import SimpleNamespace

    from maas.serve.protocols.openai.generation import _check_caps, _check_messages
    from maas.serve.runtimes.vllm_config import llm_config

    spec = LLMEngineSpec(max_sequences=8, max_n=8, allowed_media_domains=["media.example.com"])
    _check_caps({"prompt": ["a", "b", "c", "d"], "n": 2}, spec)
    _check_caps({"prompt": [1, 2, 3, 4, 5, 6, 7, 8, 9], "n": 8}, spec)  # one prompt of token ids
    for req in ({"prompt": ["a"] * 9}, {"prompt": ["a", "b", "c"], "n": 3}, {"prompt": [[1], [2], [3]], "best_of": 3},
                {"prompt": ["x"] * 1025}):
        with pytest.raises(ProtocolError, match="sequences .prompts x n.; this server allows at most 8"):
            _check_caps(req, spec)
    for field in ("ignore_eos", "min_tokens"):
        with pytest.raises(ProtocolError, match=f"'{field}' is not allowed here.*allow_forced_length"):
            _check_caps({field: True if field == "ignore_eos" else 50}, spec)
        _check_caps({field: True}, LLMEngineSpec(allow_forced_length=True))
    _check_caps({"ignore_eos": False, "min_tokens": 0}, spec)

    def part(url, kind="image_url"):
        return [{"role": "user", "content": [{"type": kind, kind: {"url": url}}]}]

    for ok in ("data:image/png;base64,iVBORw0KGgo=", "https://media.example.com/cat.png",
               "http://cdn.media.example.com/a.wav"):
        _check_messages(part(ok), spec)
    for bad, kind in (("http://169.254.169.254/latest/meta-data/", "image_url"), ("file:///etc/passwd", "image_url"),
                      ("https://media.example.com.evil.net/x.png", "image_url"), ("https://x.test/v.mp4", "video_url"),
                      ("http://10.0.0.1/a.wav", "audio_url")):
        with pytest.raises(ProtocolError, match=r"messages\[0\]\.content\[0\]\." + kind + ": media from"):
            _check_messages(part(bad, kind), spec)
    with pytest.raises(ProtocolError, match="allowed_media_domains"):
        _check_messages(part("https://media.example.com/cat.png"), LLMEngineSpec())
    mv = SimpleNamespace(name="tiny", ref="tiny/1", version=1, signature={})
    engine = llm_config("/store", mv, LLMEngineSpec(max_tokens=77, allowed_media_domains=["m.test"])).engine_kwargs
    assert engine["override_generation_config"] == {"max_new_tokens": 77}
    assert engine["allowed_media_domains"] == ["m.test"]
    assert "allowed_media_domains" not in llm_config("/store", mv, LLMEngineSpec()).engine_kwargs


def test_engine_errors_keep_their_status_in_openai_shape():
    import json
    from types import SimpleNamespace

    from maas.serve.protocols.openai.generation import _error_of

    err = SimpleNamespace(error=SimpleNamespace(message="too long", code=400, param="max_tokens", type="Bad"))
    response = _error_of(err)
    body = json.loads(response.body)
    assert response.status_code == 400 and body["error"]["message"] == "too long"
    assert body["error"]["param"] == "max_tokens" and body["error"]["type"] == "invalid_request_error"
    assert _error_of(SimpleNamespace(error=SimpleNamespace(message="x", code="weird"))).status_code == 500
    assert _error_of("data: {}") is None and _error_of(SimpleNamespace(choices=[])) is None


def _events(items, wants_usage, interval_ms=0.0):
    """What LLMHandlers._events sends for an engine stream of ``items`` (after the first), and its accounting."""
    from types import SimpleNamespace

    from maas.serve.protocols.openai.generation import LLMHandlers

    records, charged = [], []

    def charge(ctx, n):  # ModelServer.charge's bookkeeping: what the stream spent of its key's token limits
        if n > 0:
            charged.append(n)
            ctx["charged"] = ctx.get("charged", 0) + n

    handlers = LLMHandlers(lambda *args: records.append(args), charge)
    engine = SimpleNamespace(inflight=1)
    version = SimpleNamespace(engine=engine, spec=LLMEngineSpec(stream_interval_ms=interval_ms))
    loaded = SimpleNamespace(predictor=version,
                             tags={"model": "tiny", "version": "1"}, mv=SimpleNamespace(name="tiny", ref="tiny/1"))

    async def rest():
        for item in items[1:]:
            if isinstance(item, Exception):
                raise item
            yield item

    async def scenario():
        t = {"arrived": 0.0, "handed": 0.0, "first": 0.0}
        return [x async for x in handlers._events(items[0], rest(), loaded, wants_usage, t,
                                                 {"rid": "r1", "path": "/v1/completions"})]

    sent = asyncio.run(scenario())
    return sent, records, engine, charged


def test_streams_pass_vllms_events_through_and_are_accounted_when_they_end():
    pytest.importorskip("ray.serve.llm")
    usage = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    tokens = ['data: {"id":"c","choices":[{"text":" a"}]}\n\n', 'data: {"id":"c","choices":[{"text":" b"}]}\n\n']
    done = "data: [DONE]\n\n"
    sent, records, engine, charged = _events([*tokens, usage, done], wants_usage=False)
    assert sent == [*tokens, done] and engine.inflight == 0  # the usage the client did not ask for is dropped
    (name, _, status, rid, path, rows, elapsed_ms, extra, ctx), = records
    assert charged == [1, 1, 3] and ctx["charged"] == 5  # an event a token as it passes, the rest from usage
    assert (name, status, rid, path, rows) == ("tiny", 200, "r1", "/v1/completions", 1) and elapsed_ms >= 0
    assert extra["prompt_tokens"] == 3 and extra["completion_tokens"] == 2
    assert {"ttft_ms", "engine_ttft_ms", "tpot_ms", "engine_tpot_ms"} <= set(extra)
    sent, _, _, _ = _events([*tokens, usage, done], wants_usage=True, interval_ms=1)
    assert sent == [*tokens, usage, done]
    # the engine failing mid-stream: an error event, then the stream's end, the request counted as failed
    sent, records, engine, _ = _events([tokens[0], RuntimeError("engine died")], wants_usage=False)
    assert sent[0] == tokens[0] and '"error"' in sent[1] and sent[2] == done and engine.inflight == 0
    assert records[0][2] == 500 and records[0][7]["completion_tokens"] == 1  # no engine count: its events


def test_engine_placement_follows_the_spec_cpu_or_gpu():
    pytest.importorskip("ray.serve.llm")
    from types import SimpleNamespace

    from maas.serve.runtimes.vllm_config import llm_config

    mv = SimpleNamespace(name="tiny", ref="tiny/3", version=3, signature={})
    cpu = llm_config("/store", mv, LLMEngineSpec(num_cpus=2, kv_cache_gib=4, max_model_len=512))
    assert cpu.accelerator_config.kind == "cpu" and cpu.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert cpu.placement_group_config["bundles"] == [{"CPU": 2}]
    assert cpu.engine_kwargs["max_model_len"] == 512 and cpu.engine_kwargs["dtype"] == "float32"
    assert cpu.model_id == "tiny"
    gpu = llm_config("/store", mv, LLMEngineSpec(num_gpus=2, dtype="bfloat16", enforce_eager=False))
    assert gpu.accelerator_config.kind == "gpu" and gpu.engine_kwargs["tensor_parallel_size"] == 2
    assert gpu.placement_group_config["bundles"] == [{"CPU": 1, "GPU": 1}, {"GPU": 1}]
    assert gpu.engine_kwargs["dtype"] == "bfloat16" and not gpu.runtime_env
    from maas.spec import DeploySpec

    # the replicas that run engines take their placement: the engine's cores on CPUs; GPUs: the engine's own
    opts = DeploySpec(num_cpus=0.25, llm={"num_cpus": 2, "num_replicas": 2, "kv_cache_gib": 3}).serve_options(True)
    assert opts["placement_group_bundles"] == [{"CPU": 2.25}] and opts["num_replicas"] == 2
    assert opts["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "3"
    gpu_opts = DeploySpec(llm={"num_gpus": 1}).serve_options(True)
    assert "placement_group_bundles" not in gpu_opts and gpu_opts["ray_actor_options"]["num_gpus"] == 0
    assert "placement_group_bundles" not in DeploySpec(llm={"num_replicas": 3}).serve_options(False)


def test_auto_gpus_follow_the_cluster_and_engine_kwargs_reach_vllm_checked_by_name(monkeypatch):
    """``num_gpus: auto`` (the default) is one GPU where the cluster has one, else CPUs; ``engine_kwargs`` pass
    vLLM's other engine arguments, refused where a deploy.llm field sets them and checked against vLLM's names."""
    pytest.importorskip("ray.serve.llm")
    from types import SimpleNamespace

    from maas.serve.runtimes import vllm_config
    from maas.spec import DeploySpec

    auto = LLMEngineSpec()
    assert auto.num_gpus == "auto" and (auto.gpus(cluster_gpus=0), auto.gpus(cluster_gpus=8)) == (0, 1)
    assert LLMEngineSpec(num_gpus=2).gpus(cluster_gpus=0) == 2 and LLMEngineSpec(num_gpus=0).gpus(8) == 0
    assert auto.gpus() == 0  # this machine: no Ray connected, torch sees no GPU
    for bad, words in (({"num_gpus": "two"}, "num_gpus"), ({"num_gpus": -1}, "num_gpus"),
                       ({"engine_kwargs": {"max_num_seqs": 8}}, "maas sets it from deploy.llm.max_num_seqs"),
                       ({"engine_kwargs": {"tensor_parallel_size": 2}}, "deploy.llm.num_gpus"),
                       ({"engine_kwargs": {"not a name": 1}}, "is not an engine argument name")):
        with pytest.raises(SpecError, match=words):
            spec_from_dict({"kind": "llm", "model": {"name": "x", "source": "/m"}, "deploy": {"llm": bad}})

    monkeypatch.setattr(vllm_config, "vllm_engine_arg_names",
                        lambda: {"quantization", "max_num_batched_tokens", "speculative_config"})
    mv = SimpleNamespace(name="tiny", ref="tiny/3", version=3, signature={})
    spec = LLMEngineSpec(engine_kwargs={"max_num_batched_tokens": 2048, "quantization": "fp8"})
    config = vllm_config.llm_config("/store", mv, spec)
    assert config.engine_kwargs["max_num_batched_tokens"] == 2048 and config.engine_kwargs["quantization"] == "fp8"
    with pytest.raises(Exception, match=r"engine_kwargs.max_num_batched_tokenz: not an engine argument of the "
                                        r"installed vLLM; did you mean 'max_num_batched_tokens'\?"):
        vllm_config.llm_config("/store", mv, LLMEngineSpec(engine_kwargs={"max_num_batched_tokenz": 1}))
    assert "placement_group_bundles" in DeploySpec().serve_options(True)  # auto on a CPU machine: CPU placement


def test_an_adapter_is_served_by_its_base_engine_with_lora_enabled():
    pytest.importorskip("ray.serve.llm")
    from types import SimpleNamespace

    from maas.serve.runtimes.vllm_config import engine_of, llm_config, lora_name

    base = SimpleNamespace(name="tiny", ref="tiny/3", version=3, signature={"format": "huggingface"})
    adapter = SimpleNamespace(name="support", ref="support/2", version=2,
                              signature={"format": "peft-lora", "base": "tiny/3", "lora_rank": 24})
    assert engine_of(base) == ("tiny", 3, False) and engine_of(adapter) == ("tiny", 3, True)
    assert engine_of(base, lora_base=True) == engine_of(adapter, lora_base=True)  # deploy.llm.enable_lora: shared
    assert engine_of(adapter) != engine_of(base)  # without enable_lora the base runs on an engine of its own
    assert lora_name(adapter) == "support/2"
    config = llm_config("/store", base, LLMEngineSpec(max_loras=3), lora_rank=24)
    assert config.engine_kwargs["enable_lora"] and config.engine_kwargs["max_loras"] == 3
    assert config.engine_kwargs["max_lora_rank"] == 32  # the next rank vLLM admits over 24 (and the spec's 16)
    assert "enable_lora" not in llm_config("/store", base, LLMEngineSpec()).engine_kwargs


def test_llm_spec_names_its_problems():
    spec = spec_from_dict({"kind": "llm", "model": {"name": "chat", "source": "s3://b/llama"},
                           "deploy": {"llm": {"num_gpus": 1, "max_tokens": 512}}})
    assert spec.deploy.llm.num_gpus == 1 and spec.model.source == "s3://b/llama"
    for model, deploy, where in (({"name": "chat", "source": "random:huge"}, {}, "model.source"),
                                 ({"name": "Chat!", "source": "x"}, {}, "model.name"),
                                 ({"name": "chat"}, {}, "model.source"),
                                 ({"name": "chat", "source": "x"}, {"llm": {"num_gpu": 1}}, "num_gpus"),
                                 ({"name": "chat", "source": "x"}, {"llm": {"max_n": 0}}, "deploy.llm.max_n")):
        with pytest.raises(SpecError, match=where.replace(".", r"\.")):
            spec_from_dict({"kind": "llm", "model": model, "deploy": deploy})


def test_only_unmapped_new_segments_are_released(tmp_path, monkeypatch):
    from maas.serve.runtimes import vllm_config as llm_engine

    monkeypatch.setattr(llm_engine, "SHM", str(tmp_path))
    (tmp_path / "psm_old").write_bytes(b"x")
    before = llm_engine.shm_entries()
    for name in ("psm_leaked", "sem.loky-1-abc", "psm_in_use", "not_ours"):
        (tmp_path / name).write_bytes(b"x")
    # a semaphore as glibc's sem_open makes it: written and mapped under a temporary name, then linked to its
    # own and the temporary name removed, so the mapping names a deleted file (seen: a concurrent release
    # removed a starting engine's semaphore before its worker attached, and the engine failed to start)
    (tmp_path / "sem.tmpXYZ").write_bytes(b"x")
    import mmap

    with open(tmp_path / "psm_in_use", "r+b") as f, open(tmp_path / "sem.tmpXYZ", "r+b") as g:
        mapped = [mmap.mmap(f.fileno(), 1), mmap.mmap(g.fileno(), 1)]  # a live process (this one) maps them
    os.link(tmp_path / "sem.tmpXYZ", tmp_path / "sem.mp-live")
    os.unlink(tmp_path / "sem.tmpXYZ")
    try:
        assert llm_engine.shm_mappers(["sem.mp-live", "psm_leaked"]) == {"sem.mp-live": [os.getpid()],
                                                                         "psm_leaked": []}
        assert llm_engine.release_shared_memory(before) == ["psm_leaked", "sem.loky-1-abc"]
    finally:
        for m in mapped:
            m.close()
    assert sorted(os.listdir(tmp_path)) == ["not_ours", "psm_in_use", "psm_old", "sem.mp-live"]


def test_llm_pipeline_imports_promotes_and_keeps_a_moved_alias(tmp_path, monkeypatch):
    from maas.exceptions import RegistryError
    from maas.pipelines import implementation
    from maas.registry import Registry

    store = str(tmp_path / "store")
    spec = spec_from_dict({"kind": "llm", "store": store, "model": {"name": "chat", "source": "random:tiny"}})
    llm = implementation(spec)
    result = llm.run(spec, serve=False)
    reg = Registry(store)
    mv = reg.resolve("chat@production")
    assert result.ref == mv.ref == "chat/1" and mv.runtime == "vllm" and mv.task == "generate"
    assert "LlamaForCausalLM" in llm.summary(result, spec) and result.endpoint is None
    assert reg.alias_history("chat", "production")[-1]["by"] == f"run:{result.run_id}"
    # a run promotes only if the alias still points where it did when the run started
    from maas.pipelines import llm as llm_module

    monkeypatch.setattr(llm_module, "alias_target", lambda *a: None)  # as if it started before chat/1 was promoted
    with pytest.raises(RegistryError, match="production"):
        llm.run(spec, serve=False)
    assert reg.resolve("chat@production").version == 1


def test_deploy_progress_says_each_state_once_not_every_second(monkeypatch):
    from maas.serve import readiness

    said = []
    watch = readiness._Progress(said.append)
    for line in ("tiny/1 is starting its vLLM engine: fetching for 0 s (started 0 s ago)",
                 "tiny/1 is starting its vLLM engine: fetching for 1 s (started 1 s ago)",
                 "tiny/1 is starting its vLLM engine: loading for 0 s (started 2 s ago)",
                 "tiny/1 is starting its vLLM engine: loading for 7 s (started 9 s ago)"):
        watch.say(line)
    assert [line.split(": ")[1].split(" for")[0] for line in said] == ["fetching", "loading"]
    monkeypatch.setattr(readiness, "REPORT_EVERY_S", 0.0)  # a long state is said again now and then
    watch.say("tiny/1 is starting its vLLM engine: loading for 40 s (started 42 s ago)")
    assert len(said) == 3
