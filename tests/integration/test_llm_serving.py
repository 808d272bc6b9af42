"""LLMs on vLLM through Ray Serve LLM behind the maas ingress: a random tiny Llama (built here, no download)
imported into the registry, served by a real vLLM engine on CPU, asked through the official `openai` client:
every route, streaming and usage, OpenAI-shaped errors that never stop the server, API keys, the version
header, a canary, and an alias roll-over under streaming load with no failed request."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import requests

from maas.runtime import free_port
from maas.spec import DeploySpec
from tests.llm_helpers import app_engines, engines_gone_and_shared_memory_released
from tests.waiting import wait_until

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")
pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]  # over 30 s each, setup included
KEY = "llm-key-0123456789abcdef"


@pytest.fixture(scope="module")
def llm(ray_session, tmp_path_factory):
    from ray import serve

    from maas.models import make_tiny_llama
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model
    from maas.serve import build_app
    from maas.serve.deploy import proxy_address, start_serve, undeploy
    from maas.serve.readiness import wait_until_serving
    from maas.serve.runtimes.vllm_config import shm_entries
    from maas.serve.served import fetch_all, normalize_routes
    from maas.serve.tenancy import key_digest

    shm_before = shm_entries()
    tmp = tmp_path_factory.mktemp("llm")
    reg = Registry(str(tmp / "store"))
    for seed in (0, 1):  # two different random models: versions 1 and 2
        import_hf_model(reg, str(make_tiny_llama(tmp / f"tiny{seed}", seed=seed)), "tiny", by="test")
    reg.set_alias("tiny", "production", 1)
    spec = DeploySpec(alias_poll_s=0.5, llm={"num_cpus": 1, "max_model_len": 256, "max_n": 4, "max_tokens": 200,
                                             "allow_forced_length": True, "max_sequences": 16})
    routes = normalize_routes([{"model": "tiny", "alias": "production", "canary_alias": "candidate",
                                "canary_percent": 50}])
    start_serve(DeploySpec(port=free_port(), grpc_port=0))  # maas's ingress: the high-throughput mode
    assert [mv.ref for mv in fetch_all(reg, routes, spec.llm)] == ["tiny/1"]  # resolved; the replica fetches
    serve.run_many([serve.RunTarget(build_app(reg.location, routes, spec, api_key_hashes=[key_digest(KEY)]),
                                    name="llm", route_prefix="/llm")], wait_for_applications_running=False)
    url = f"http://{proxy_address('127.0.0.1', 8000)}/llm"
    said = []  # the engine starts in the replica, in the background: maas's own wait reports it
    wait_until_serving("llm", url, 1, spec.llm.start_timeout_s, said.append)
    assert any("tiny/1 is starting its vLLM engine" in line for line in said), said
    try:
        yield {"url": url, "registry": reg,
               "client": openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)}
    finally:
        undeploy("llm")
        engines_gone_and_shared_memory_released(shm_before)


def test_openai_client_every_route_with_usage_and_version(llm):
    c = llm["client"]
    assert [m.id for m in c.models.list().data] == ["tiny"]
    card = c.models.retrieve("tiny")
    assert card.id == "tiny" and card.version == "tiny/1" and card.task == "generate"

    raw = c.completions.with_raw_response.create(model="tiny", prompt="w1 w2 w3", max_tokens=5, temperature=0)
    done = raw.parse()
    assert raw.headers["x-maas-model-version"] == "tiny/1"
    assert done.usage.prompt_tokens >= 3 and done.usage.completion_tokens == 5 and done.choices[0].text
    again = c.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=5, temperature=0)
    assert again.choices[0].text == done.choices[0].text  # greedy decoding is deterministic

    chunks = list(c.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=5, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == done.choices[0].text
    assert chunks[-1].usage.completion_tokens == 5 and not chunks[-1].choices
    plain = list(c.completions.create(model="tiny", prompt="w1", max_tokens=4, stream=True))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices[0].finish_reason == "length"

    raw = c.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "system", "content": "w7"}, {"role": "user", "content": "w1 w2"}],
        max_tokens=6)
    chat = raw.parse()
    assert raw.headers["x-maas-model-version"] == "tiny/1" and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 6 and chat.choices[0].message.content
    streamed = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w3"}],
                                              max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert streamed[-1].usage.completion_tokens == 4
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices).strip()
    # `model` may be left out when one generative model is served, or name a version
    assert requests.post(f"{llm['url']}/v1/completions", json={"prompt": "w1", "max_tokens": 2},
                         headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert c.completions.create(model="tiny/1", prompt="w1", max_tokens=2).choices[0].text


def test_maas_batch_generates_what_the_endpoint_answers_and_rejects_what_it_cannot_ask(llm, tmp_path):
    """``maas batch`` on a language model: Ray Data LLM's vLLM engine over a JSON Lines file of prompts and chats
    gives, greedy, the endpoint's own answers; a row that cannot be asked or that the engine refuses is a
    reject with its reason; rows in = answers + rejects."""
    import pandas as pd

    from maas.batch import run_batch
    from maas.exceptions import BatchError

    c, store = llm["client"], llm["registry"].location
    prompts = {f"p{i}": " ".join(f"w{(7 * i + k) % 240}" for k in range(3 + i % 5)) for i in range(12)}
    chats = {f"c{i}": [{"role": "system", "content": f"w{i}"}, {"role": "user", "content": f"w{i + 1} w{i + 2}"}]
             for i in range(6)}
    bad = {"empty": "", "too-long": "w1 " * 600}  # the second is past the model's 512 positions: the engine's
    rows = [{"id": k, "prompt": v} for k, v in {**prompts, **bad}.items()] + \
        [{"id": k, "messages": v} for k, v in {**chats, "not-a-chat": [{"role": "robot", "content": "w1"}]}.items()]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    done = run_batch(store, "tiny@production", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), max_tokens=8,
                     fmt="jsonl", progress=said.append)
    assert (done.ref, done.rows, done.answered, done.rejected) == ("tiny/1", 21, 18, 3), done
    assert any("of start-up" in line for line in said), said
    got = pd.concat(pd.read_json(f, lines=True, dtype=False) for f in (tmp_path / "out" / "answers").iterdir())
    got = got.set_index("id")
    for rid, prompt in prompts.items():
        online = c.completions.create(model="tiny/1", prompt=prompt, max_tokens=8, temperature=0)
        assert got.loc[rid, "text"] == online.choices[0].text, rid
        assert got.loc[rid, "prompt_tokens"] == online.usage.prompt_tokens and got.loc[rid, "completion_tokens"] == 8
    for rid, messages in chats.items():
        online = c.chat.completions.create(model="tiny/1", messages=messages, max_tokens=8, temperature=0)
        assert got.loc[rid, "text"] == online.choices[0].message.content, rid
        assert got.loc[rid, "prompt_tokens"] == online.usage.prompt_tokens, rid
    assert set(got["version"]) == {"tiny/1"} and set(got["finish_reason"]) <= {"length", "stop"}
    rejects = pd.concat(pd.read_json(f, lines=True) for f in (tmp_path / "out" / "rejects").iterdir())
    rejects = rejects.set_index("id")["reason"]
    assert "non-empty text" in rejects["empty"] and rejects["too-long"].startswith("the engine refused it"), rejects
    assert "turn 0 must be" in rejects["not-a-chat"]
    with pytest.raises(BatchError, match="--max-tokens and --temperature"):  # the same output, other sampling
        run_batch(store, "tiny/1", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), max_tokens=5, fmt="jsonl")


def test_the_openai_batch_api_answers_a_file_of_chats_as_the_endpoint_does_with_bad_lines_as_error_lines(llm, tmp_path):
    """The unmodified ``openai`` client's Batch API round trip: a JSON Lines file uploaded, a batch over it run as a
    maas batch (Ray Data LLM's engine), its output file's answers equal to the endpoint's own (greedy), and each
    malformed line an error line naming its mistake, never a failed batch; a second batch cancelled at once."""
    c = llm["client"]
    chats = {f"c{i}": [{"role": "user", "content": f"w{i} w{i + 3} w{i + 5}"}] for i in range(5)}
    line = lambda cid, body, url="/v1/chat/completions": json.dumps(  # noqa: E731
        {"custom_id": cid, "method": "POST", "url": url, "body": {"model": "tiny", **body}})
    good = [line(k, {"messages": m, "max_tokens": 6 + int(k[1:]) % 2}) for k, m in chats.items()]
    bad = {"text": "this line is not JSON", "url": line("url", {"messages": chats["c0"]}, "/v1/completions"),
           "field": line("field", {"messages": chats["c0"], "logprobs": True}),
           "model": line("model", {"messages": chats["c0"], "model": "nope"}),
           "again": line("c0", {"messages": chats["c0"]}),
           "robot": line("robot", {"messages": [{"role": "robot", "content": "w1"}]}),
           "long": line("long", {"messages": [{"role": "user", "content": "w1 " * 600}]})}
    (tmp_path / "in.jsonl").write_text("\n".join(good[:3] + list(bad.values()) + good[3:]) + "\n")
    with open(tmp_path / "in.jsonl", "rb") as f:
        upload = c.files.create(file=f, purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == (tmp_path / "in.jsonl").stat().st_size
    assert c.files.content(upload.id).content == (tmp_path / "in.jsonl").read_bytes()
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"team": "test"})
    other = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert c.batches.cancel(other.id).status in ("cancelling", "cancelled")
    done = wait_until(lambda: (b := c.batches.retrieve(batch.id)).status in ("completed", "failed") and b, 600,
                      "the batch's end")
    assert done.status == "completed" and done.metadata == {"team": "test"}, done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 5, 7)
    answers = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(a["custom_id"] for a in answers) == sorted(chats)
    for a in answers:
        body = a["response"]["body"]
        online = c.chat.completions.create(model="tiny", messages=chats[a["custom_id"]], temperature=0,
                                           max_tokens=6 + int(a["custom_id"][1:]) % 2)
        assert body["choices"][0]["message"]["content"] == online.choices[0].message.content, a
        assert body["usage"]["prompt_tokens"] == online.usage.prompt_tokens
        assert body["usage"]["completion_tokens"] == online.usage.completion_tokens
        assert a["response"]["status_code"] == 200 and body["system_fingerprint"] == "tiny/1"
    # metered as the endpoint meters requests, by the batch's own writer: a line a request, with its tokens,
    # under the batch's key (an unnamed one: "-"), in the hour the batch was made
    from maas.registry.usage import hour_of

    metered = json.loads(llm["registry"].store.read_bytes(f"usage/{hour_of(done.created_at)}/batch-{batch.id}.json"))
    rows = {tuple(r[:3]): r[3:] for r in metered["rows"]}
    tokens = [sum(a["response"]["body"]["usage"][k] for a in answers) for k in ("prompt_tokens", "completion_tokens")]
    assert rows == {("-", "tiny", "1"): [5, 0, *tokens, 5], ("-", "-", "-"): [7, 7, 0, 0, 0]}, rows
    errors = {e["custom_id"]: e["response"]["body"]["error"]["message"]
              for e in map(json.loads, c.files.content(done.error_file_id).text.splitlines())}
    assert set(errors) == {None, "url", "field", "model", "c0", "robot", "long"}, errors
    for cid, words in [(None, "not JSON"), ("url", "/v1/chat/completions"), ("field", "'logprobs'"),
                       ("model", "'nope' is not served"), ("c0", "repeats"), ("robot", "turn 0 must be"),
                       ("long", "the engine refused it")]:
        assert words in errors[cid], (cid, errors[cid])
    cancelled = wait_until(lambda: (b := c.batches.retrieve(other.id)).status == "cancelled" and b, 300, "cancel")
    assert cancelled.request_counts.completed <= 5
    listed = [b.id for b in c.batches.list(limit=10)]
    assert listed[:2] == [other.id, batch.id] or set(listed[:2]) == {other.id, batch.id}
    # the routes' mistakes, in OpenAI's shape; no key, no batch
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_0123456789abcdef01234567")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        c.batches.create(input_file_id=upload.id, endpoint="/v1/images", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    r = requests.get(f"{llm['url']}/v1/batches/{batch.id}", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(llm):
    c, url = llm["client"], llm["url"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        c.completions.create(model="tiny", prompt="w1 " * 300, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="'max_tokens' is 1001"):
        c.completions.create(model="tiny", prompt="w1", max_tokens=1001)  # over the configured cap
    with pytest.raises(openai.BadRequestError, match="'max_tokens' is 300"):
        c.completions.create(model="tiny", prompt="w1", max_tokens=300)  # over the cap and the context
    with pytest.raises(openai.BadRequestError, match="'n' is 5"):
        c.completions.create(model="tiny", prompt="w1", max_tokens=2, n=5)
    with pytest.raises(openai.NotFoundError, match="not served"):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "w1"}])
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    bad = [("chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "w1"}]}, "role"),
           ("chat/completions", {"model": "tiny", "messages": "w1 w2"}, "messages"),
           ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "content"),
           ("chat/completions", {"model": "tiny", "messages": []}, "messages"),
           ("completions", {"model": "tiny"}, "prompt"),
           ("completions", {"model": "tiny", "prompt": "w1", "temperature": "hot"}, "temperature"),
           ("completions", {"model": "tiny", "prompt": "w1", "best_of": 9}, "best_of"),
           ("completions", {"model": "tiny", "prompt": ["w1"] * 17, "max_tokens": 2}, "17 sequences"),
           ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
               {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data/"}}]}]},
            "media from http://169.254.169.254")]
    for route, body, field in bad:
        r = requests.post(f"{url}/v1/{route}", data=json.dumps(body), headers=headers)
        assert r.status_code == 400 and field in r.json()["error"]["message"], (route, body, r.text)
    r = requests.post(f"{url}/v1/chat/completions", headers=headers,
                      data=b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert c.completions.create(model="tiny", prompt="w1", max_tokens=2).choices[0].text  # still serving
    # no max_tokens: the deployment's cap (200), not the context's rest (256 - prompt)
    long = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w1"}],
                                     extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 200 and long.choices[0].finish_reason == "length"


def test_an_engine_that_cannot_start_fails_the_deploy_with_its_own_error(llm):
    """vLLM's own message (here: a context longer than the model's), not a timeout; the application the deploy
    made is gone again. An engine argument vLLM does not have is named with the closest one it has."""
    from maas.exceptions import ServeError
    from maas.serve import deploy
    from maas.serve.readiness import app_status

    spec = DeploySpec(llm={"num_cpus": 1, "max_model_len": 100000})
    started = time.monotonic()
    with pytest.raises(ServeError, match=r"vLLM engine of tiny/1 did not start: .*max_model_len \(100000\)"):
        deploy(llm["registry"].location, "tiny/1", spec, app_name="llm-broken", route_prefix="/broken")
    assert time.monotonic() - started < 120 and app_status("llm-broken")[0] is None
    # deploy.llm.engine_kwargs are checked in the replica against the installed vLLM's engine arguments
    spec = DeploySpec(llm={"num_cpus": 1, "engine_kwargs": {"max_num_batched_tokenz": 64}})
    with pytest.raises(ServeError, match=r"engine_kwargs.max_num_batched_tokenz: not an engine argument of the "
                                         r"installed vLLM; did you mean 'max_num_batched_tokens'"):
        deploy(llm["registry"].location, "tiny/1", spec, app_name="llm-broken", route_prefix="/broken")


def test_a_client_that_goes_away_mid_stream_frees_the_engine(llm):
    """The stream ends in the replica too: the engine's request count drops back and the access log says 499,
    with the tokens that reached the client (metered, and spent of a key's token limits)."""
    from ray import serve
    from ray._private.worker import _global_node

    rid = f"llm-gone-{time.time_ns()}"
    r = requests.post(f"{llm['url']}/v1/completions", stream=True, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "x-request-id": rid},
                      json={"model": "tiny", "prompt": "w1", "max_tokens": 200, "stream": True, "ignore_eos": True})
    assert next(line for line in r.iter_lines() if line.startswith(b"data: {"))
    r.close()  # long before its 200 tokens

    def idle():
        return all(e["inflight"] == 0 for e in serve.get_app_handle("llm").maas_status.remote().result()["engines"])

    logs = f"{_global_node.get_session_dir_path()}/logs/serve/replica_*.log"
    assert _wait(lambda: idle() and _access_entry(logs, rid) is not None, 20)
    entry = _access_entry(logs, rid)
    # no count from the engine (it was cut short): the events that passed, a token each, and no prompt count
    assert entry["status"] == 499 and 1 <= entry["completion_tokens"] < 200 and "prompt_tokens" not in entry, entry
    # the engine still answers (ignore_eos: a random model may sample its end-of-sequence token first, and an
    # empty text then failed this check in a CI run)
    assert llm["client"].completions.create(model="tiny", prompt="w1", max_tokens=2,
                                            extra_body={"ignore_eos": True}).choices[0].text


def test_tokenize_and_detokenize_answer_with_the_served_versions_own_tokenizer(llm):
    """What evaluation harnesses ask before scoring (vLLM's /tokenize and /detokenize), behind the same keys,
    model names and OpenAI-shaped errors as the rest."""
    from transformers import AutoTokenizer

    url, auth = llm["url"], {"Authorization": f"Bearer {KEY}"}
    folder, _ = llm["registry"].fetch("tiny/1")
    tok = AutoTokenizer.from_pretrained(folder)
    r = requests.post(f"{url}/tokenize", json={"model": "tiny", "prompt": "w1 w2 w3", "add_special_tokens": False},
                      headers=auth, timeout=30)
    assert r.status_code == 200 and r.headers["x-maas-model-version"] == "tiny/1", r.text
    ids = r.json()["tokens"]
    assert ids == tok("w1 w2 w3", add_special_tokens=False)["input_ids"] and r.json()["count"] == len(ids)
    back = requests.post(f"{url}/detokenize", json={"model": "tiny", "tokens": ids}, headers=auth, timeout=30)
    assert back.status_code == 200 and back.json()["prompt"] == tok.decode(ids)
    chat = requests.post(f"{url}/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "w1"}],
                                                  "add_generation_prompt": True}, headers=auth, timeout=30)
    assert chat.status_code == 200 and chat.json()["tokens"] == tok.apply_chat_template(
        [{"role": "user", "content": "w1"}], add_generation_prompt=True, tokenize=True, return_dict=False)
    for route, body, status, words in (
            ("tokenize", {"model": "tiny"}, 400, "'prompt' (a string) or 'messages' is missing"),
            ("detokenize", {"model": "tiny", "tokens": "12"}, 400, "'tokens' is missing"),
            ("tokenize", {"model": "nope", "prompt": "w1"}, 404, "nope"),
            ("tokenize", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "role")):
        bad = requests.post(f"{url}/{route}", json=body, headers=auth, timeout=30)
        assert bad.status_code == status and words in bad.json()["error"]["message"], (route, body, bad.text)
    assert requests.post(f"{url}/tokenize", json={"model": "tiny", "prompt": "w1"}, headers=auth).status_code == 200


def test_lm_eval_tasks_through_the_endpoint_score_as_lm_eval_does_in_process(llm, tmp_path, monkeypatch):
    """lm-evaluation-harness's `local-completions` model against the served engine (token-id prompts, echo and
    logprobs; greedy generation) gives the log-likelihoods and continuations its `hf` model gives in-process
    on the same folder: serving changes no score."""
    from maas.eval.tasks import run_tasks
    from maas.spec.evaluation import EvalTaskSpec

    assert llm["registry"].resolve("tiny@production").ref == "tiny/1"
    rows = [{"question": f"w{i} w{i + 1} w{i + 2}", "choices": [f"w{i + 3}", f"w{i + 40}", f"w{i + 7}"],
             "answer": i % 3} for i in range(1, 9)]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "gen.jsonl").write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1}", "answer": f"w{i + 2}"})
                                                  for i in range(1, 7)))
    tasks = [EvalTaskSpec(name="mc", path=str(tmp_path / "mc.jsonl"), type="multiple_choice"),
             EvalTaskSpec(name="gen", path=str(tmp_path / "gen.jsonl"), type="generate", max_tokens=4),
             EvalTaskSpec(name="gen_word", path=str(tmp_path / "gen.jsonl"), type="generate", max_tokens=4,
                          match="regex", pattern=r"w\d+"),
             EvalTaskSpec(name="gen_in", path=str(tmp_path / "gen.jsonl"), type="generate", max_tokens=4,
                          match="contains"),
             EvalTaskSpec(name="mc_yaml", path=str(tmp_path / "mc.yaml"), type="lm_eval")]
    (tmp_path / "mc.yaml").write_text(  # the mc task as a harness YAML: the same scores
        "dataset_path: json\ndataset_kwargs: {data_files: {test: mc.jsonl}}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n")
    folder, _ = llm["registry"].fetch("tiny/1")
    served = run_tasks(tasks, endpoint=llm["url"], model="tiny", tokenizer=str(folder), api_key=KEY)
    local = run_tasks(tasks, pretrained=str(folder))
    assert served.harness == local.harness and served.harness.startswith("lm-eval 0.4")
    for name in ("mc", "gen", "gen_word", "gen_in"):
        s, t = served.tasks[name], local.tasks[name]
        assert s.sha256 == t.sha256 and s.items == t.items == (8 if name == "mc" else 6)
        assert s.score == t.score, (name, s.answers, t.answers)
    for mine, theirs in zip(served.tasks["mc"].answers, local.tasks["mc"].answers):
        assert mine == pytest.approx(theirs, abs=2e-3)  # fp32 engine vs fp32 transformers: float noise only
    # greedy: the same words (vLLM's detokenizer keeps the space before the first one, transformers' drops it;
    # the score ignores surrounding whitespace)
    assert [a.strip() for a in served.tasks["gen"].answers] == [a.strip() for a in local.tasks["gen"].answers]
    assert all(a.startswith("w") for a in served.tasks["gen_word"].answers)
    yaml_local, yaml_served = local.tasks["mc_yaml"], served.tasks["mc_yaml"]
    assert yaml_local.answers == local.tasks["mc"].answers and yaml_local.score == local.tasks["mc"].score
    assert yaml_served.metric == "acc" and yaml_served.items == 8  # the engine batches it differently: float noise
    for mine, theirs in zip(yaml_served.answers, served.tasks["mc"].answers):
        assert mine == pytest.approx(theirs, abs=2e-3)
    picked = [max(range(3), key=lls.__getitem__) for lls in yaml_served.answers]
    assert yaml_served.score == pytest.approx(sum(p == r["answer"] for p, r in zip(picked, rows)) / 8)
    expected = [f"w{i + 2}" for i in range(1, 7)]  # contains: the answer anywhere in the continuation
    assert served.tasks["gen_in"].metric == "contains" and served.tasks["gen_in"].score == pytest.approx(
        sum(e in a for e, a in zip(expected, served.tasks["gen_in"].answers)) / 6)
    picked = [max(range(3), key=lls.__getitem__) for lls in served.tasks["mc"].answers]
    assert served.tasks["mc"].score == pytest.approx(sum(p == r["answer"] for p, r in zip(picked, rows)) / 8)

    # the CLI's --endpoint: the served model, the tokenizer of the registered version, the key from MAAS_API_KEY
    from maas.cli import main

    monkeypatch.setenv("MAAS_API_KEY", KEY)
    out = tmp_path / "cli.json"
    assert main(["eval", "tiny@production", "--endpoint", llm["url"], "--task", f"mc={tmp_path / 'mc.jsonl'}:"
                 "multiple_choice", "--store", llm["registry"].location, "--json", str(out)]) == 0
    kept = json.loads(out.read_text())["tiny (served)"]["tasks"]["mc"]
    assert kept["score"] == served.tasks["mc"].score and kept["sha256"] == served.tasks["mc"].sha256


def test_api_keys_guard_every_llm_route(llm):
    url = llm["url"]
    for method, route in (("get", "v1/models"), ("get", "v1/models/tiny"), ("post", "v1/completions"),
                          ("post", "v1/chat/completions"), ("post", "tokenize"), ("post", "detokenize")):
        r = getattr(requests, method)(f"{url}/{route}", json={"model": "tiny", "prompt": "w1", "tokens": [1]},
                                      headers={"Authorization": "Bearer wrong-key-0123456789"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w1"}])


def test_canary_then_rollover_under_streaming_load_fails_nothing(llm):
    """Streams run all along: the candidate's engine starts while v1 takes every request, then shares the
    traffic; production moves to v2 and the candidate alias goes: only v2 answers, v1's engine is retired."""
    reg, url = llm["registry"], llm["url"]
    seen, failures, stop = [], [], threading.Event()

    def stream_forever():
        c = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                raw = c.completions.with_raw_response.create(model="tiny", prompt="w1 w2", max_tokens=16,
                                                             stream=True, extra_body={"ignore_eos": True})
                chunks = [ch for ch in raw.parse() if ch.choices]
                seen.append((time.time(), raw.headers["x-maas-model-version"],
                             chunks[-1].choices[0].finish_reason == "length"))  # all 16 tokens came
            except Exception as exc:  # any failure at all fails the test
                failures.append(repr(exc))
            stop.wait(0.2)  # steady streaming traffic that leaves the CPU to the starting engine (-24 s here)

    threads = [threading.Thread(target=stream_forever, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        reg.set_alias("tiny", "candidate", 2)
        assert _wait(lambda: any(v == "tiny/2" for _, v, _ in seen), 240), Counter(v for _, v, _ in seen)
        since = len(seen)
        assert _wait(lambda: len(seen) >= since + 40, 120)
        canary_share = Counter(v for _, v, _ in seen[since:since + 40])  # ~50% each
        reg.set_alias("tiny", "production", 2)
        reg.delete_alias("tiny", "candidate")
        moved = time.time()
        assert _wait(lambda: len([s for s in seen if s[0] > moved + 3]) >= 20, 120)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:3]
    assert all(ok for _, _, ok in seen)
    assert canary_share["tiny/2"] >= 5 and canary_share["tiny/1"] >= 5, canary_share
    assert {v for t, v, _ in seen if t > moved + 3} == {"tiny/2"}
    assert _wait(lambda: app_engines("llm") == ["tiny/2"], 90), app_engines("llm")
    assert llm["client"].models.retrieve("tiny").version == "tiny/2"


def test_a_streams_access_log_line_has_its_tokens_and_both_ttft_and_tpot(llm):
    """Written when the stream ends: the tokens, and time to first token / per output token as the client got
    them (from the request's arrival) and as the engine made them (from the hand-over)."""
    from ray._private.worker import _global_node

    rid = f"llm-log-{time.time_ns()}"
    r = requests.post(f"{llm['url']}/v1/completions", stream=True, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "x-request-id": rid},
                      json={"model": "tiny", "prompt": "w1 w2", "max_tokens": 12, "stream": True, "ignore_eos": True})
    assert r.status_code == 200 and sum(1 for line in r.iter_lines() if line.startswith(b"data: {")) == 12
    logs = f"{_global_node.get_session_dir_path()}/logs/serve/replica_*.log"
    assert _wait(lambda: _access_entry(logs, rid) is not None, 20)
    entry = _access_entry(logs, rid)
    assert entry["status"] == 200 and entry["model"] == "tiny" and entry["completion_tokens"] == 12
    assert entry["prompt_tokens"] >= 2 and entry["path"] == "/v1/completions"
    assert 0 < entry["engine_ttft_ms"] <= entry["ttft_ms"] <= entry["latency_ms"]
    assert entry["tpot_ms"] > 0 and entry["engine_tpot_ms"] > 0
    for kind, path, body in (("text", "/v1/completions", {"prompt": "w1"}),
                             ("chat", "/v1/chat/completions", {"messages": []})):
        refused = f"{rid}-refused-{kind}"  # refused once its version is known: logged under that version
        r = requests.post(f"{llm['url']}{path}", timeout=60, json={"model": "tiny", **body, "max_tokens": 10 ** 6},
                          headers={"Authorization": f"Bearer {KEY}", "x-request-id": refused})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert _wait(lambda: _access_entry(logs, refused) is not None, 20)
        logged = _access_entry(logs, refused)
        assert (logged["status"], logged["path"], logged["model"]) == (400, path, "tiny")
        assert logged["version"] == entry["version"] is not None


def _access_entry(pattern: str, rid: str):
    import glob

    for path in glob.glob(pattern):
        for line in open(path, errors="replace"):
            if '"maas_access":true' in line and rid in line:
                return json.loads(line[line.index("{"):line.rindex("}") + 1])
    return None


def test_a_keys_token_limit_spends_the_engines_tokens_and_its_metered_usage_is_what_the_client_counted(llm):
    """A named key limited to 300 tokens a day, asked by the `openai` client in turns streamed (chat) and not
    (completions) until it is refused: the tokens its answers reported add up to at least the limit and to less
    than the limit and one more answer; the 429 names the limit and says when to come back; the usage metered
    for the key is what the client counted, token for token, its refusal an error."""
    from maas.registry.usage import totals

    _, secret = llm["registry"].keys.create("tokens", models=["tiny"], tokens_per_day=300)
    client = openai.OpenAI(base_url=f"{llm['url']}/v1", api_key=secret, max_retries=0, timeout=60)
    assert _wait(lambda: _works(client), 10)  # the replica's next poll of the keys
    prompt = completion = answered = 0
    refused, biggest = None, 0
    for i in range(100):
        try:
            if i % 2:
                usage = client.completions.create(model="tiny", prompt="w1 w2", max_tokens=8, extra_body={
                    "ignore_eos": True}).usage
            else:
                chunks = list(client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "w3"}], max_tokens=8, stream=True,
                    stream_options={"include_usage": True}))
                usage = chunks[-1].usage
        except openai.RateLimitError as err:
            refused = err
            break
        prompt, completion, answered = prompt + usage.prompt_tokens, completion + usage.completion_tokens, answered + 1
        biggest = max(biggest, usage.total_tokens)
    assert refused is not None and answered > 5, answered
    assert 300 <= prompt + completion < 300 + biggest, (prompt, completion, biggest)
    assert "API key 'tokens' is over its limit of 300 tokens per day" in refused.message
    assert 0 < int(refused.response.headers["retry-after"]) <= 86_400

    def metered():
        return [(u.requests, u.errors, u.prompt_tokens, u.completion_tokens)
                for u in totals(llm["registry"].usage(key="tokens"), by=("key",))]

    assert _wait(lambda: metered() == [(answered + 1, 1, prompt, completion)], 10), metered()


def _works(client) -> bool:
    try:
        return bool(client.models.list().data)
    except openai.AuthenticationError:
        return False


def test_llm_metrics_per_model_and_version(llm):
    from ray._private.worker import _global_node

    port = _global_node.metrics_export_port
    names = ("maas_llm_tokens_total", "maas_key_tokens_total", "maas_llm_time_to_first_token_ms_bucket",
             "maas_llm_time_per_output_token_ms_bucket", "maas_llm_engine_time_to_first_token_ms_bucket",
             "maas_llm_engine_time_per_output_token_ms_bucket")
    deadline, lines = time.time() + 90, []
    while time.time() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if any(n in line for n in names) and 'model="tiny"' in line]
        if all(any(n in line for line in lines) for n in names) and any('kind="completion"' in x for x in lines):
            break
        time.sleep(2)
    assert all(any(n in line for line in lines) for n in names), lines[:10]
    completion = [line for line in lines if "tokens_total" in line and 'kind="completion"' in line]
    assert completion and float(completion[0].rsplit(" ", 1)[1]) > 0
    assert any('key="tokens"' in line for line in lines if "maas_key_tokens_total" in line)  # its name, per key


def _wait(cond, timeout_s: float):
    return wait_until(cond, timeout_s, every_s=0.5)
