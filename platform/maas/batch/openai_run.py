"""One OpenAI batch run as a maas batch: its input file's lines checked (a malformed line is an error line, never
a failed batch), the rows of each model handed to ``maas.batch.run_batch`` (a language model's through Ray Data
LLM's vLLM engine with the endpoint's engine settings; an encoder's through its actor pool), and its answers
written back as OpenAI's output and error files.

Lines: ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {...}}`` with a body as the route
takes it. ``/v1/completions`` (``prompt``: one text) and ``/v1/chat/completions`` (``messages``): ``model`` (a
served name, or ``name/version``), ``max_tokens`` (chat: or ``max_completion_tokens``; default 16 for
completions as OpenAI's, ``deploy.llm.max_tokens`` for chats), ``temperature`` (default 0 here: greedy),
``n`` = 1, ``stream`` false, ``user``. ``/v1/embeddings``: ``model``, ``input`` (a text or a list of texts, each
a row of its own), ``encoding_format``, ``user``. Any other field is the line's error, named.

A run stops at its next block when the batch is cancelled or its 24-hour window ends (``expired``: the requests
it did not reach become ``batch_expired`` error lines); what it wrote before is the batch's output. A run that
is lost (its actor died) is launched again and goes on from what it wrote (``maas.batch``'s resume).
"""

from __future__ import annotations

import json
import time
from typing import Optional

from maas.exceptions import BatchError, RegistryError
from maas.serve.protocols.openai.files import ENDPOINTS, TERMINAL, BatchStore, new_id

_COMMON = {"model", "user"}
_GENERATE = _COMMON | {"max_tokens", "temperature", "n", "stream"}
EMBEDDINGS = "/v1/embeddings"
ALLOWED = {"/v1/completions": _GENERATE | {"prompt"},
           "/v1/chat/completions": _GENERATE | {"messages", "max_completion_tokens"},
           EMBEDDINGS: _COMMON | {"input", "encoding_format", "dimensions"}}
COMPLETIONS_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions
EXPIRED = "This request could not be executed before the completion window expired."  # OpenAI's words


class Stopped(Exception):
    """The batch was cancelled, or its window ended, while it ran: ``status`` says which."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def parse_lines(data: bytes, endpoint: str, served: dict, cap: int,
                denied: tuple = ()) -> tuple[dict, list, dict, int]:
    """(rows per model ref, error lines, {custom_id: its request}, lines) of an input file. A request is
    ``{"ref": the version that answers, "model": as asked, "rows": the ids of its rows}`` (and the
    ``format`` of an embeddings line, whose texts are a row each). ``denied``: served models the batch's API
    key may not call (a line naming one is a 403 error line)."""
    groups: dict = {}
    errors, asked = [], {}
    lines = [(n, ln) for n, ln in enumerate(data.split(b"\n"), 1) if ln.strip()]  # numbered as an editor does
    for number, raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(error_line(None, 400, f"line {number} is not JSON", "invalid_json"))
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        why, rows, request = _check_line(line, number, endpoint, served, cap, denied)
        if why is None and cid in asked:
            why = (400, f"line {number}: custom_id {cid!r} repeats an earlier line's")
        if why is not None:
            errors.append(error_line(cid if isinstance(cid, str) else None, *why))
            continue
        asked[cid] = request
        groups.setdefault(request["ref"], []).extend(rows)
    return groups, errors, asked, len(lines)


def _check_line(line, number: int, endpoint: str, served: dict, cap: int, denied: tuple = ()):
    """(None, the line's rows for maas batch, its request), or ((status, message), None, None)."""
    where = f"line {number}"
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not line["custom_id"]:
        return (400, f"{where}: needs a 'custom_id' (text)"), None, None
    if line.get("method", "POST") != "POST" or line.get("url") != endpoint:
        return (400, f"{where}: must be POST {endpoint} (the batch's endpoint), got {line.get('method')} "
                     f"{line.get('url')}"), None, None
    body = line.get("body")
    if not isinstance(body, dict):
        return (400, f"{where}: 'body' must be an object"), None, None
    extra = sorted(set(body) - ALLOWED[endpoint])
    if extra:
        return (400, f"{where}: body field {extra[0]!r} is not supported in a batch; fields: "
                     f"{', '.join(sorted(ALLOWED[endpoint]))}"), None, None
    if body.get("n", 1) != 1 or body.get("stream", False) is not False:
        return (400, f"{where}: a batch line asks n=1 and no stream"), None, None
    model = body.get("model")
    name = model.split("/")[0] if isinstance(model, str) else None
    if name in denied:
        return (403, f"{where}: this batch's API key may not call model {name!r}"), None, None
    if name not in served:
        return (404, f"{where}: model {model!r} is not served here; served: {', '.join(served) or 'none'}"), None, None
    request = {"ref": model if "/" in model else served[name], "model": model}
    if endpoint == EMBEDDINGS:
        why, rows, request["format"] = _embedding_rows(body, number)
    else:
        why, rows = _generation_rows(body, line["custom_id"], ENDPOINTS[endpoint], cap)
    if why is not None:
        return (why[0], f"{where}: {why[1]}"), None, None
    return None, rows, {**request, "rows": [r["id"] for r in rows]}


def _generation_rows(body: dict, custom_id: str, column: str, cap: int):
    """(None, [the line's row]) or ((status, why), None): checked as maas batch checks a row, so every row
    handed over has one type per column."""
    from maas.batch.llm import check_row, row_sampling

    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = COMPLETIONS_DEFAULT_TOKENS if column == "prompt" else cap
    asked_column, value, why = check_row({column: body.get(column)})
    sampled, bad = row_sampling({"max_tokens": tokens, "temperature": body.get("temperature")},
                                {"max_tokens": cap, "temperature": 0.0}, cap)
    if why or bad:
        return (400, (why or bad).replace("column ", "body field ")), None
    return None, [{"id": custom_id, asked_column: value, **sampled}]


def _embedding_rows(body: dict, number: int):
    """(None, a row per text, the encoding format) or ((status, why), None, None): parsed by the route's own
    parser; a row's id is the line's number and the text's place in it."""
    from maas.serve.errors import ProtocolError
    from maas.serve.protocols.oip.codec import parse_embeddings_request

    try:
        texts, _, fmt = parse_embeddings_request(json.dumps(body).encode())
    except ProtocolError as err:
        return (err.status, err.message), None, None
    if any(isinstance(t, tuple) for t in texts):
        return (400, "'input' as token ids is not taken in a batch line: send texts"), None, None
    return None, [{"id": f"{number}.{i}", "input": t} for i, t in enumerate(texts)], fmt


def error_line(custom_id: Optional[str], status: int, message: str, code: Optional[str] = None) -> dict:
    from maas.serve.errors import openai_error_body

    body = openai_error_body(status, message)
    if code:
        body["error"]["code"] = code
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": new_id("req_"), "body": body}, "error": None}


def expired_line(custom_id: str) -> dict:
    """A request the batch did not reach before its window ended, as OpenAI writes it."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": "batch_expired", "message": EXPIRED}}


def output_line(custom_id: str, endpoint: str, request: dict, answers: list[dict]) -> dict:
    """One answered request as the route would have answered it, from its rows' answers."""
    if endpoint == EMBEDDINGS:
        import numpy as np

        from maas.serve.protocols.oip.codec import embeddings_response

        vectors = np.asarray([a["embedding"] for a in answers], np.float32)
        body = embeddings_response(vectors, answers[0]["version"], request["format"],
                                   sum(int(a["tokens"]) for a in answers))
    else:
        body = generation_body(endpoint, request["model"], answers[0])
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": new_id("req_"), "body": body}, "error": None}


def generation_body(endpoint: str, model: str, answer: dict) -> dict:
    """A completion's or chat's answer body (``system_fingerprint``: the version that ran)."""
    chat = endpoint == "/v1/chat/completions"
    choice = {"index": 0, "finish_reason": answer["finish_reason"], "logprobs": None,
              **({"message": {"role": "assistant", "content": answer["text"]}} if chat else {"text": answer["text"]})}
    usage = {"prompt_tokens": int(answer["prompt_tokens"]), "completion_tokens": int(answer["completion_tokens"])}
    return {"id": new_id("chatcmpl-" if chat else "cmpl-"), "object": "chat.completion" if chat else
            "text_completion", "created": int(time.time()), "model": model, "choices": [choice],
            "usage": {**usage, "total_tokens": sum(usage.values())}, "system_fingerprint": answer["version"]}


def run_openai_batch(store: str, batch_id: str) -> dict:
    """Run batch ``batch_id`` to its end (completed, cancelled, expired or failed) and answer its object. Its
    run file holds what the endpoint gave it: {model name: the version served now}, the engine settings."""
    bs = BatchStore(store)
    obj = bs.batch(None, batch_id)
    if obj["status"] in TERMINAL:
        return obj
    try:
        return _run(bs, obj, bs.run_args(batch_id))  # a cancel or expiry stops it there (Stopped, caught)
    except Exception as err:  # a fault of the run, not of a line: the batch fails with it, named
        return bs.fail(batch_id, f"{type(err).__name__}: {err}")


def _run(bs: BatchStore, obj: dict, run: dict) -> dict:
    from maas.spec import DeploySpec

    served, llm = run.get("served", {}), run.get("llm")
    batch_id, endpoint = obj["id"], obj["endpoint"]
    bs.update(batch_id, status="in_progress", in_progress_at=obj.get("in_progress_at") or int(time.time()))
    cap = DeploySpec(llm=llm or {}).llm.max_tokens
    groups, errors, asked, total = parse_lines(bs.content(obj["input_file_id"]), endpoint, served, cap,
                                               tuple(run.get("denied", ())))
    bs.update(batch_id, request_counts={"total": total, "completed": 0, "failed": len(errors)},
              maas_versions=sorted(groups))
    outputs, status = [], "completed"
    for ref, rows in groups.items():
        mine = {cid: r for cid, r in asked.items() if r["ref"] == ref}
        work, refused = f"batches/{batch_id}/{ref.replace('/', '-')}", None
        try:
            _check_stop(bs, obj)
            refused = _run_model(bs, obj, work, ref, rows, llm)
        except Stopped as stop:  # what was written before it is the batch's partial output
            status = stop.status
        written, failed = ([], [error_line(cid, *refused) for cid in mine]) if refused else \
            _written(bs, work, endpoint, mine)
        outputs, errors = outputs + written, errors + failed
        bs.update(batch_id, request_counts={"total": total, "completed": len(outputs), "failed": len(errors)})
        if status != "completed":
            break
    if status == "expired":
        ended = {ln["custom_id"] for ln in outputs + errors}
        errors += [expired_line(cid) for cid in asked if cid not in ended]
    return _finish(bs, batch_id, status, outputs, errors, run.get("key"))


def _run_model(bs: BatchStore, obj: dict, work: str, ref: str, rows: list, llm: Optional[dict]):
    """Answer one model's rows with ``maas batch`` into ``work``/out; (status, why) when it cannot run them."""
    from maas.batch import run_batch
    from maas.batch.rows import input_columns
    from maas.registry import Registry

    try:
        if obj["endpoint"] == EMBEDDINGS:  # the text goes in the column the encoder reads
            mv = Registry(bs.store).resolve(ref)
            column = input_columns(mv.signature, mv.task)[0]
            rows = [{"id": r["id"], column: r["input"]} for r in rows]
        bs.write(f"{work}/in/rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        run_batch(bs.store, ref, bs.uri(f"{work}/in/rows.jsonl"), bs.uri(f"{work}/out"), fmt="jsonl", llm=llm,
                  progress=lambda _line: _check_stop(bs, obj))
    except (BatchError, RegistryError) as err:
        return (404 if isinstance(err, RegistryError) else 400), str(err)
    return None


def _written(bs: BatchStore, work: str, endpoint: str, asked: dict) -> tuple[list, list]:
    """(output lines, error lines) of the requests ``asked`` whose rows ``maas batch`` wrote into ``work``/out;
    a request with a rejected row is an error line naming it, one with rows not yet written is neither."""
    answers = {a["id"]: a for a in bs.parts(f"{work}/out/answers")}
    rejects = {r["id"]: r["reason"] for r in bs.parts(f"{work}/out/rejects")}
    outputs, errors = [], []
    for cid, request in asked.items():
        rows = request["rows"]
        refused = next(((i, rejects[r]) for i, r in enumerate(rows) if r in rejects), None)
        if refused is not None:
            where = f"'input'[{refused[0]}]: " if endpoint == EMBEDDINGS else ""
            errors.append(error_line(cid, 400, where + refused[1]))
        elif all(r in answers for r in rows):
            outputs.append(output_line(cid, endpoint, request, [answers[r] for r in rows]))
    return outputs, errors


def _check_stop(bs: BatchStore, obj: dict) -> None:
    if bs.cancelled(obj["id"]):
        raise Stopped("cancelled")
    if time.time() >= obj["expires_at"]:
        raise Stopped("expired")


def _finish(bs: BatchStore, batch_id: str, status: str, outputs: list, errors: list,
            key: Optional[str]) -> dict:
    """Write the output and error files (OpenAI's: JSON Lines, one line per request), meter them under
    ``key`` (the API key's name that made the batch) and end the batch."""
    now = int(time.time())
    obj = bs.update(batch_id, status="finalizing", finalizing_at=now) if status == "completed" else \
        bs.batch(None, batch_id)
    owner = obj["maas_owner"]
    files = {}
    for field, lines in (("output_file_id", outputs), ("error_file_id", errors)):
        if lines:
            data = "".join(json.dumps(ln) + "\n" for ln in lines).encode()
            files[field] = bs.put_file(owner, f"{batch_id}_{field[:-8]}.jsonl", "batch_output", data)["id"]
    counts = {"total": (obj.get("request_counts") or {}).get("total", 0), "completed": len(outputs),
              "failed": len(errors)}
    meter(bs, obj, outputs, errors, key)
    return bs.update(batch_id, status=status, request_counts=counts, **files,
                     **{f"{status}_at": int(time.time())})


def meter(bs: BatchStore, obj: dict, outputs: list, errors: list, key: Optional[str]) -> None:
    """The batch's usage, as the endpoint meters a request (``maas.registry.usage``): a line a request, under
    the key that made the batch, in the hour it was made. One writer per batch, written whole: a run that
    ends twice (launched again after a lost run) writes the same object, never counts twice."""
    from maas.registry.objects import open_store
    from maas.registry.usage import UsageWriter

    writer = UsageWriter(open_store(bs.store), f"batch-{obj['id']}")
    t = float(obj["created_at"])
    for line in outputs:
        body = line["response"]["body"]
        name, _, version = str(body.get("system_fingerprint") or body.get("model") or "-").partition("/")
        usage = body.get("usage") or {}
        rows = len(body["data"]) if isinstance(body.get("data"), list) else 1  # texts embedded; or an answer
        writer.add(t, key, name, version or "-", 200, rows, int(usage.get("prompt_tokens") or 0),
                   int(usage.get("completion_tokens") or 0))
    for line in errors:
        writer.add(t, key, "-", "-", (line.get("response") or {}).get("status_code") or 408, 0)
    writer.write()
