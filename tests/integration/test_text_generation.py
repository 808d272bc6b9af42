"""The language-model pipeline on the shared local Ray: text files (with bad lines) -> quarantine and byte
blocks (Ray Data) -> a GPT trained with FSDP2 over 2 Ray Train workers (sharded checkpoints) -> registry ->
Ray Serve over HTTP: OpenAI /v1/completions (plain and streamed) and the OIP generate extension."""

import json
from pathlib import Path

import pytest
import requests
import torch

from maas.data.corpus import english_corpus
from maas.pipelines.lm import run_lm_pipeline
from maas.models.artifacts import SHARDS, load_torch_model
from maas.models import load_predictor
from maas.registry import Registry
from maas.serve import VERSION_HEADER
from maas.spec import spec_from_dict
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def lm(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    texts = root / "texts"
    texts.mkdir()
    sentences = english_corpus(limit=900)
    (texts / "a.txt").write_text("\n".join(sentences[:700]) + "\n")
    lines = [s.encode() for s in sentences[700:]]
    lines.insert(40, b"caf\xe9 latin-1, not UTF-8")  # quarantined: not UTF-8
    lines.insert(90, b"a line with a \x00 byte")      # quarantined: NUL
    (texts / "b.txt").write_bytes(b"\n".join(lines) + b"\n")
    spec = spec_from_dict({
        "kind": "lm", "store": str(root / "store"),
        "model": {"name": "gpt", "size": "tiny", "block_size": 32},
        "data": {"source": "files", "path": str(texts), "val_fraction": 0.1},
        "train": {"num_workers": 2, "strategy": "fsdp", "epochs": 3, "batch_size": 64, "learning_rate": 0.004,
                  "checkpoint_every_epochs": 1, "log_every_steps": 5},
        "generate": {"max_tokens": 24, "max_tokens_limit": 200},
        "deploy": {"port": free_port()},
    })
    stages = []
    result = run_lm_pipeline(spec, serve=True, progress=lambda s, d: stages.append((s, d)))
    yield {"spec": spec, "result": result, "registry": Registry(str(root / "store")), "stages": stages}
    from ray import serve

    serve.delete("gpt")


def test_fsdp_training_learns_and_publishes_with_lineage(lm):
    result, registry = lm["result"], lm["registry"]
    c = result.data_counts
    assert c["lines_rejected"] == 2 and c["documents"] == 2 and c["splits"]["val"] > 0
    quarantined = [json.loads(line) for line in (Path(result.run_dir) / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((Path(q["source"]).name, q["line"]) for q in quarantined) == [("b.txt", 41), ("b.txt", 91)]
    assert {q["reason"].split(" ")[0] for q in quarantined} == {"not", "NUL"}

    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    m = result.metrics
    assert m["val_bits_per_byte"] < 5.0  # uniform guessing over bytes costs 8 bits
    assert m["tokens_per_s_train"] > 0 and m["generate_tokens_per_s"] > 0 and m["parameters"] > 50_000

    mv = registry.resolve("gpt@production")
    assert mv.ref == result.ref and mv.signature["task"] == "generation" and mv.task == "generate"
    assert mv.lineage["strategy"] == "fsdp" and mv.lineage["data_fingerprint"] == result.data_fingerprint
    # the best checkpoint is per-rank shards (FSDP2) that assemble into the published full model
    ckpt = Path(mv.lineage["checkpoint"])
    assert (ckpt / SHARDS).is_file() and len(list(ckpt.glob("model-*-of-00002.safetensors"))) == 2
    from_shards, _ = load_torch_model(ckpt)
    folder, _ = registry.fetch(result.ref)
    published, config = load_torch_model(folder)
    x = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.allclose(from_shards(x), published(x))
    steps = [json.loads(line) for line in (Path(result.run_dir) / "train_metrics.jsonl").read_text().splitlines()]
    assert any(s["kind"] == "step" and s["tokens_per_s"] > 0 for s in steps)
    assert (Path(result.run_dir) / "train_curves.png").read_bytes()[:4] == b"\x89PNG"


def _greedy(lm, prompt: str, n: int) -> str:
    folder, _ = lm["registry"].fetch(lm["result"].ref)
    return load_predictor(folder, "torch", "generate").complete(prompt.encode(), max_tokens=n, temperature=0)[0]


def test_openai_completions_plain_and_streamed(lm):
    url = f"{lm['result'].endpoint}/v1/completions"
    expected = _greedy(lm, "The value of", 40)
    r = requests.post(url, json={"model": "gpt", "prompt": "The value of", "max_tokens": 40, "temperature": 0},
                      timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == lm["result"].ref
    assert body["choices"][0]["text"] == expected and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}
    assert r.headers[VERSION_HEADER] == lm["result"].ref

    with requests.post(url, json={"prompt": "The value of", "max_tokens": 40, "temperature": 0, "stream": True},
                       stream=True, timeout=30) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        events = [line[len(b"data: "):] for line in s.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 5  # pieces arrive as they are generated, not as one answer
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])

    # sampling: seeded requests repeat; a stop string ends the answer before it
    a = requests.post(url, json={"prompt": "A", "max_tokens": 30, "temperature": 1.0, "seed": 5}, timeout=30).json()
    b = requests.post(url, json={"prompt": "A", "max_tokens": 30, "temperature": 1.0, "seed": 5}, timeout=30).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    stop = expected[5:8]
    cut = requests.post(url, json={"prompt": "The value of", "max_tokens": 40, "temperature": 0, "stop": stop},
                        timeout=30).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == expected[:expected.find(stop)]


def test_oip_generate_extension_and_client_mistakes(lm):
    base = lm["result"].endpoint
    expected = _greedy(lm, "Return", 24)  # the served default max_tokens (24) applies
    r = requests.post(f"{base}/v2/models/gpt/generate", json={"text_input": "Return", "id": "q1",
                                                              "parameters": {"temperature": 0}}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == expected and r.json()["id"] == "q1" and r.json()["generated_tokens"] == 24
    with requests.post(f"{base}/v2/models/gpt/generate_stream", json={"text_input": "Return", "parameters":
                       {"temperature": 0}}, stream=True, timeout=30) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith(b"data: ")]
    assert "".join(e["text_output"] for e in events) == expected and events[-1]["finish_reason"] == "length"

    mistakes = [
        ("post", "/v1/completions", {"data": b"{not json"}, 400, "not valid JSON"),
        ("post", "/v1/completions", {"json": {"prompt": "x", "max_tokens": 201}}, 400, "max_tokens"),
        ("post", "/v1/completions", {"json": {"model": "nope", "prompt": "x"}}, 404, "not served"),
        ("post", "/v1/embeddings", {"json": {"model": "gpt", "input": "x"}}, 400, "/v1/completions"),
        ("post", "/v2/models/gpt/infer", {"json": {"inputs": []}}, 400, "generates text"),
        ("post", "/v2/models/gpt/generate", {"json": {"text_input": 5}}, 400, "must be a string"),
        ("get", "/v1/completions", {}, 405, "use POST"),
        ("get", "/v2/models/gpt/generate", {}, 405, "use POST"),
    ]
    for method, path, kwargs, status, message in mistakes:
        resp = getattr(requests, method)(base + path, timeout=30, **kwargs)
        assert resp.status_code == status, (path, resp.text)
        assert message in json.dumps(resp.json()), (path, resp.text)
    meta = requests.get(f"{base}/v2/models/gpt", timeout=10).json()
    assert meta["inputs"][0]["name"] == "text_input" and meta["outputs"][0]["datatype"] == "BYTES"
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
