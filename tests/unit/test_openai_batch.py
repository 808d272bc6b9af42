"""The OpenAI Batch API's pieces without Ray: a file's lines checked into maas batch rows and error lines, answers
in the routes' shapes, and files and batches kept per API key in the store."""

from __future__ import annotations

import json

import pytest

SERVED = {"lm": "lm/3"}


def _line(cid, body, url="/v1/chat/completions", method="POST"):
    return json.dumps({"custom_id": cid, "method": method, "url": url, "body": body}).encode()


def test_lines_become_rows_per_served_version_and_every_mistake_an_error_line_naming_it():
    from maas.batch.openai_run import parse_lines

    chat = [{"role": "user", "content": "hi"}]
    lines = [_line("a", {"model": "lm", "messages": chat, "max_tokens": 5, "temperature": 0.5}),
             _line("b", {"model": "lm/2", "messages": chat}),
             b"{not json", _line("c", {"model": "lm", "messages": chat}, method="GET"),
             _line("d", {"model": "lm", "messages": chat, "tools": []}),
             _line("e", {"model": "other", "messages": chat}),
             _line("a", {"model": "lm", "messages": chat}),
             _line("f", {"model": "lm", "messages": chat, "max_tokens": 0}),
             _line("g", {"model": "lm", "messages": chat, "n": 2}),
             _line("h", {"model": "lm", "messages": "hi"}),
             json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}).encode(), b"  ", b"[]"]
    groups, errors, asked, total = parse_lines(b"\n".join(lines), "/v1/chat/completions", SERVED, 100)
    assert total == 12 and asked == {"a": {"ref": "lm/3", "model": "lm", "rows": ["a"]},
                                     "b": {"ref": "lm/2", "model": "lm/2", "rows": ["b"]}}
    assert groups == {"lm/3": [{"id": "a", "messages": chat, "max_tokens": 5, "temperature": 0.5}],
                      "lm/2": [{"id": "b", "messages": chat, "max_tokens": 100, "temperature": 0.0}]}
    said = {(e["custom_id"], e["response"]["status_code"]): e["response"]["body"]["error"]["message"] for e in errors}
    expected = {(None, 400): "line 13: needs a 'custom_id'", ("c", 400): "must be POST /v1/chat/completions",
                ("d", 400): "body field 'tools' is not supported", ("e", 404): "'other' is not served here",
                ("a", 400): "custom_id 'a' repeats", ("f", 400): "'max_tokens' must be a whole number from 1 to 100",
                ("g", 400): "n=1 and no stream", ("h", 400): "body field 'messages'"}
    assert set(said) == set(expected), said
    for key, words in expected.items():
        assert words in said[key], (key, said[key])
    assert [e["response"]["body"]["error"]["message"] for e in errors if e["custom_id"] is None] == [
        "line 3 is not JSON", "line 11: needs a 'custom_id' (text)", "line 13: needs a 'custom_id' (text)"]
    assert [e["response"]["body"]["error"]["code"] for e in errors if e["custom_id"] is None][0] == "invalid_json"


def test_a_completion_line_defaults_to_openais_16_tokens_and_takes_one_prompt_text():
    from maas.batch.openai_run import parse_lines

    data = b"\n".join([_line("a", {"model": "lm", "prompt": "w1 w2"}, "/v1/completions"),
                       _line("b", {"model": "lm", "prompt": ["w1", "w2"]}, "/v1/completions"),
                       _line("c", {"model": "lm", "prompt": "w1", "messages": []}, "/v1/completions")])
    groups, errors, _, _ = parse_lines(data, "/v1/completions", SERVED, 100)
    assert groups == {"lm/3": [{"id": "a", "prompt": "w1 w2", "max_tokens": 16, "temperature": 0.0}]}
    assert {e["custom_id"] for e in errors} == {"b", "c"}


def test_an_answer_line_has_the_routes_shape_and_the_version_that_ran_it():
    from maas.batch.openai_run import output_line

    answer = {"text": "w3", "finish_reason": "length", "prompt_tokens": 4, "completion_tokens": 1, "version": "lm/3"}
    chat = output_line("a", "/v1/chat/completions", {"model": "lm"}, [answer])
    body = chat["response"]["body"]
    assert chat["custom_id"] == "a" and chat["response"]["status_code"] == 200 and chat["error"] is None
    assert body["object"] == "chat.completion" and body["model"] == "lm" and body["system_fingerprint"] == "lm/3"
    assert body["choices"] == [{"index": 0, "finish_reason": "length", "logprobs": None,
                                "message": {"role": "assistant", "content": "w3"}}]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
    text = output_line("b", "/v1/completions", {"model": "lm"}, [answer])["response"]["body"]
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "w3"


def test_an_embeddings_line_is_a_row_per_text_and_answers_as_the_route_with_the_vectors_in_order():
    import base64

    import numpy as np

    from maas.batch.openai_run import output_line, parse_lines

    url, served = "/v1/embeddings", {"enc": "enc/2"}
    data = b"\n".join([_line("one", {"model": "enc", "input": "a text"}, url),
                       _line("two", {"model": "enc/1", "input": ["x", "y"], "encoding_format": "base64"}, url),
                       _line("ids", {"model": "enc", "input": [1, 2, 3]}, url),
                       _line("empty", {"model": "enc", "input": ["x", " "]}, url),
                       _line("dims", {"model": "enc", "input": "x", "dimensions": 8}, url),
                       _line("many", {"model": "enc", "input": ["x"] * 2049}, url),
                       _line("tokens", {"model": "enc", "input": "x", "max_tokens": 3}, url)])
    groups, errors, asked, total = parse_lines(data, url, served, 100)
    assert total == 7 and groups == {"enc/2": [{"id": "1.0", "input": "a text"}],
                                     "enc/1": [{"id": "2.0", "input": "x"}, {"id": "2.1", "input": "y"}]}
    assert asked["two"] == {"ref": "enc/1", "model": "enc/1", "format": "base64", "rows": ["2.0", "2.1"]}
    said = {e["custom_id"]: (e["response"]["status_code"], e["response"]["body"]["error"]["message"]) for e in errors}
    assert said["ids"][1] == "line 3: 'input' as token ids is not taken in a batch line: send texts"
    assert said["empty"] == (400, "line 4: 'input' holds an empty string; every text needs content")
    assert "'dimensions' is not supported" in said["dims"][1] and said["many"][0] == 413
    assert "body field 'max_tokens' is not supported" in said["tokens"][1]
    vectors = [[0.5, -1.25], [0.1, 3.0]]
    answers = [{"id": r, "embedding": v, "tokens": 3 + i, "version": "enc/1"}
               for i, (r, v) in enumerate(zip(asked["two"]["rows"], vectors))]
    body = output_line("two", url, asked["two"], answers)["response"]["body"]
    assert body["model"] == "enc/1" and body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert np.array_equal(np.stack(got), np.asarray(vectors, np.float32))


def test_a_batch_past_its_window_ends_expired_with_each_request_it_did_not_reach_as_openai_writes_it(tmp_path):
    from maas.batch.openai_run import run_openai_batch
    from maas.serve.protocols.openai.files import OWNER, BatchStore

    bs = BatchStore(str(tmp_path / "store"))
    chat = [{"role": "user", "content": "hi"}]
    lines = [_line("a", {"model": "lm", "messages": chat}), _line("b", {"model": "nope", "messages": chat})]
    source = bs.put_file("key-a", "in.jsonl", "batch", b"\n".join(lines))
    bs.put_batch({"id": "batch_000001", "endpoint": "/v1/chat/completions", "input_file_id": source["id"],
                  "status": "validating", "created_at": 1, "expires_at": 2, "request_counts": None, OWNER: "key-a"})
    bs.put_run("batch_000001", {"served": SERVED, "llm": None, "launches": 1})
    obj = run_openai_batch(bs.store, "batch_000001")  # the window ended before its run began: nothing runs
    assert obj["status"] == "expired" and obj["expired_at"] and obj.get("output_file_id") is None
    assert obj["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    errors = {ln["custom_id"]: ln for ln in map(json.loads, bs.content(obj["error_file_id"]).splitlines())}
    assert errors["a"]["response"] is None and errors["a"]["error"]["code"] == "batch_expired"
    assert errors["b"]["response"]["status_code"] == 404
    assert bs.file("key-a", obj["error_file_id"])["purpose"] == "batch_output"
    assert run_openai_batch(bs.store, "batch_000001") == bs.batch(None, "batch_000001")  # ended: left as it is


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_files_and_batches_are_kept_per_key_and_no_id_reaches_outside_the_store(where, tmp_path, request):
    from maas.serve.protocols.openai.files import OWNER, BatchStore, public

    bs = BatchStore(str(tmp_path / "store") if where == "folder" else request.getfixturevalue("s3_bucket"))
    f = bs.put_file("key-a", "in.jsonl", "batch", b'{"x": 1}\n')
    assert bs.file("key-a", f["id"])["bytes"] == 9 and bs.content(f["id"]) == b'{"x": 1}\n'
    assert bs.file("key-b", f["id"]) is None and OWNER not in public(f)
    for hostile in ("../../etc/passwd", "file-" + "x" * 80, "a/b", ""):
        assert bs.file("key-a", hostile) is None and bs.batch(None, hostile) is None
    for i, owner in enumerate(("key-a", "key-b", "key-a")):
        bs.put_batch({"id": f"batch_{i:06d}", "created_at": i, "status": "validating", OWNER: owner})
    assert [b["id"] for b in bs.batches("key-a")] == ["batch_000002", "batch_000000"]
    assert bs.batch("key-b", "batch_000000") is None and bs.batch("key-b", "batch_000001")["id"] == "batch_000001"
    assert bs.cancel("batch_000000")["status"] == "cancelling" and bs.cancelled("batch_000000")
    assert bs.update("batch_000000", status="in_progress", in_progress_at=5)["status"] == "cancelling"
    assert bs.update("batch_000000", status="cancelled")["status"] == "cancelled" and not bs.cancelled("batch_000001")


def _call(srv, method: str, path: str, key=None, body: bytes = b"", content_type: str = "application/json"):
    """One request through the replica's ``__call__`` in-process: (status, JSON body)."""
    import asyncio

    from tests.asgi import asgi_request

    headers = (("content-type", content_type),) + ((("authorization", f"Bearer {key}"),) if key else ())
    response = asyncio.run(srv(asgi_request(method, path, body, headers)))
    return response.status_code, json.loads(response.body) if response.body[:1] in (b"{", b"[") else response.body


def _upload(purpose="batch", data=b'{"custom_id": "a"}\n', name="in.jsonl"):
    import requests

    prepared = requests.Request("POST", "http://x/v1/files", files={"file": (name, data)},
                                data={"purpose": purpose}).prepare()
    return prepared.body, prepared.headers["content-type"]


def test_the_file_routes_keep_each_keys_files_its_own_and_refuse_bad_uploads_in_openais_shape(tmp_path):
    from maas.models import build_model
    from maas.models.artifacts import save_torch_model
    from maas.models.mlp import classifier_signature
    from maas.registry import Registry
    from maas.serve.app import ModelServer
    from maas.serve.tenancy import key_digest

    config = {"arch": "mlp", "input_dim": 4, "num_classes": 2, "hidden_sizes": [8], "dropout": 0.0}
    reg = Registry(str(tmp_path / "store"))  # a served classifier: the endpoint the files are sent to
    reg.publish("m", save_torch_model(build_model(config), config, tmp_path / "v1"), runtime="torch",
                task="classify", signature=classifier_signature(4, [0, 1]))
    a, b = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
    srv = ModelServer.func_or_class(reg.location, ["m/1"], api_key_hashes=[key_digest(a), key_digest(b)],
                                    max_batch_file_bytes=2048, alias_poll_s=60)
    try:
        status, made = _call(srv, "POST", "/v1/files", a, *_upload())
        assert status == 200 and made["purpose"] == "batch" and made["bytes"] == 19 and made["filename"] == "in.jsonl"
        assert _call(srv, "GET", f"/v1/files/{made['id']}", a)[1]["id"] == made["id"]
        assert _call(srv, "GET", f"/v1/files/{made['id']}/content", a) == (200, {"custom_id": "a"})
        for key, path in [(b, f"/v1/files/{made['id']}"), (b, f"/v1/files/{made['id']}/content"),
                          (a, "/v1/files/..%2F..%2Fetc"), (a, "/v1/batches/batch_0123456789abcdef01234567")]:
            status, body = _call(srv, "GET", path, key)
            assert status == 404 and body["error"]["type"] == "not_found_error", (path, body)
        status, body = _call(srv, "POST", "/v1/batches", b, json.dumps(
            {"input_file_id": made["id"], "endpoint": "/v1/chat/completions"}).encode())
        assert status == 404 and "no batch input file" in body["error"]["message"]  # another key's file
        for args, status_code, words in [
                ((None, *_upload()), 401, "API key"),
                ((a, *_upload(purpose="fine-tune")), 400, "'purpose' must be 'batch'"),
                ((a, *_upload(data=b"\xff\xfe not utf-8\n")), 400, "UTF-8"),
                ((a, *_upload(data=b"\n \n")), 400, "1 to 50,000 JSON lines"),
                ((a, *_upload(data=b"x" * 4096)), 413, "over the limit of 2048"),
                ((a, b'{"purpose": "batch"}'), 400, "multipart/form-data"),
                ((a, b"--zz\r\ngarbage", "multipart/form-data; boundary=zz"), 400, "'purpose'")]:
            status, body = _call(srv, "POST", "/v1/files", *args)
            assert status == status_code and words in body["error"]["message"], (words, body)
        for req, words in [({"input_file_id": made["id"], "endpoint": "/v1/moderations"}, "'endpoint'"),
                           ({"input_file_id": made["id"], "endpoint": "/v1/embeddings"},
                            "no model served here answers /v1/embeddings; served: m (classify)"),
                           ({"input_file_id": made["id"], "endpoint": "/v1/completions"},
                            "no model served here answers /v1/completions"),
                           ({"input_file_id": made["id"], "endpoint": {}}, "'endpoint'"),  # the fuzzer's 500
                           ({"input_file_id": made["id"], "endpoint": "/v1/completions",
                             "completion_window": ["24h"]}, "'completion_window'"),
                           ({"input_file_id": made["id"], "endpoint": "/v1/completions",
                             "completion_window": "1h"}, "'completion_window'"),
                           ({"input_file_id": made["id"], "endpoint": "/v1/completions",
                             "metadata": {"k": 1}}, "'metadata'")]:
            status, body = _call(srv, "POST", "/v1/batches", a, json.dumps(req).encode())
            assert status == 400 and words in body["error"]["message"], body
        assert _call(srv, "GET", "/v1/batches?limit=0", a)[0] == 400
        assert _call(srv, "GET", "/v1/batches", a)[1] == {"object": "list", "data": [], "first_id": None,
                                                           "last_id": None, "has_more": False}
    finally:
        srv.__del__()
