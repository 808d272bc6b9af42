"""One OpenAI batch run as a maas batch: its input file's lines checked (a malformed line is an error line, never
a failed batch), the rows of each model handed to ``maas.batch.run_batch`` (Ray Data LLM's vLLM engine, the
endpoint's engine settings), and its answers written back as OpenAI's output and error files.

Lines: ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {...}}`` with a body as
``/v1/completions`` (``prompt``: one text) or ``/v1/chat/completions`` (``messages``) takes it: ``model`` (a
served name, or ``name/version``), ``max_tokens`` (chat: or ``max_completion_tokens``; default 16 for
completions as OpenAI's, ``deploy.llm.max_tokens`` for chats), ``temperature`` (default 0 here: greedy),
``n`` = 1, ``stream`` false, ``user``. Any other field is the line's error, named.
"""

from __future__ import annotations

import json
import time
from typing import Optional

from maas.exceptions import BatchError, RegistryError
from maas.serve.protocols.openai.files import ENDPOINTS, TERMINAL, BatchStore, new_id

_COMMON = {"model", "max_tokens", "temperature", "n", "stream", "user"}
ALLOWED = {"/v1/completions": _COMMON | {"prompt"},
           "/v1/chat/completions": _COMMON | {"messages", "max_completion_tokens"}}
COMPLETIONS_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


class Cancelled(Exception):
    """The batch was cancelled while it ran."""


def parse_lines(data: bytes, endpoint: str, served: dict, cap: int) -> tuple[dict, list, dict, int]:
    """(rows per model ref, error lines, {custom_id: model as asked}, lines) of an input file."""
    groups: dict = {}
    errors, asked, seen = [], {}, set()
    lines = [(n, ln) for n, ln in enumerate(data.split(b"\n"), 1) if ln.strip()]  # numbered as an editor does
    for number, raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append(error_line(None, 400, f"line {number} is not JSON", "invalid_json"))
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        why, row, ref = _check_line(line, number, endpoint, served, cap)
        if why is None and cid in seen:
            why = (400, f"line {number}: custom_id {cid!r} repeats an earlier line's")
        if why is not None:
            errors.append(error_line(cid if isinstance(cid, str) else None, *why))
            continue
        seen.add(cid)
        asked[cid] = line["body"]["model"]
        groups.setdefault(ref, []).append(row)
    return groups, errors, asked, len(lines)


def _check_line(line, number: int, endpoint: str, served: dict, cap: int):
    """(None, the row for maas batch, the model's ref), or ((status, message), None, None)."""
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
    if name not in served:
        return (404, f"{where}: model {model!r} is not served here; served: {', '.join(served) or 'none'}"), None, None
    from maas.batch.llm import check_row, row_sampling

    column = ENDPOINTS[endpoint]
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = COMPLETIONS_DEFAULT_TOKENS if column == "prompt" else cap
    # checked here as maas batch checks a row, so every row handed over has one type per column
    asked_column, value, why = check_row({column: body.get(column)})
    sampled, bad = row_sampling({"max_tokens": tokens, "temperature": body.get("temperature")},
                                {"max_tokens": cap, "temperature": 0.0}, cap)
    if why or bad:
        return (400, f"{where}: {(why or bad).replace('column ', 'body field ')}"), None, None
    row = {"id": line["custom_id"], asked_column: value, **sampled}
    return None, row, model if "/" in model else served[name]


def error_line(custom_id: Optional[str], status: int, message: str, code: Optional[str] = None) -> dict:
    from maas.serve.errors import openai_error_body

    body = openai_error_body(status, message)
    if code:
        body["error"]["code"] = code
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": new_id("req_"), "body": body}, "error": None}


def output_line(custom_id: str, endpoint: str, model: str, answer: dict) -> dict:
    """One answered row as the route would have answered it (``system_fingerprint``: the version that ran)."""
    chat = endpoint == "/v1/chat/completions"
    choice = {"index": 0, "finish_reason": answer["finish_reason"], "logprobs": None,
              **({"message": {"role": "assistant", "content": answer["text"]}} if chat else {"text": answer["text"]})}
    usage = {"prompt_tokens": int(answer["prompt_tokens"]), "completion_tokens": int(answer["completion_tokens"])}
    body = {"id": new_id("chatcmpl-" if chat else "cmpl-"), "object": "chat.completion" if chat else
            "text_completion", "created": int(time.time()), "model": model, "choices": [choice],
            "usage": {**usage, "total_tokens": sum(usage.values())}, "system_fingerprint": answer["version"]}
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": new_id("req_"), "body": body}, "error": None}


def run_openai_batch(store: str, batch_id: str, served: dict, llm: Optional[dict] = None) -> dict:
    """Run batch ``batch_id`` to its end (completed, cancelled or failed) and answer its object.
    ``served``: {model name: the version the endpoint serves it with now}; ``llm``: the endpoint's engine
    settings (``deploy.llm``)."""
    bs = BatchStore(store)
    obj = bs.batch(None, batch_id)
    if obj["status"] in TERMINAL:
        return obj
    try:
        return _run(bs, obj, served, llm)
    except Cancelled:
        return _finish(bs, batch_id, "cancelled", [], [])
    except Exception as err:  # a fault of the run, not of a line: the batch fails with it, named
        return bs.update(batch_id, status="failed", failed_at=int(time.time()), errors={
            "object": "list", "data": [{"code": "batch_failed", "message": f"{type(err).__name__}: {err}"[:2000],
                                        "param": None, "line": None}]})


def _run(bs: BatchStore, obj: dict, served: dict, llm: Optional[dict]) -> dict:
    from maas.spec import DeploySpec

    spec = DeploySpec(llm=llm or {}).llm
    batch_id, endpoint = obj["id"], obj["endpoint"]
    _check_cancel(bs, batch_id)
    obj = bs.update(batch_id, status="in_progress", in_progress_at=int(time.time()))
    groups, errors, asked, total = parse_lines(bs.content(obj["input_file_id"]), endpoint, served, spec.max_tokens)
    bs.update(batch_id, request_counts={"total": total, "completed": 0, "failed": len(errors)},
              maas_versions=sorted(groups))
    outputs, status = [], "completed"
    for ref, rows in groups.items():
        work = f"batches/{batch_id}/{ref.replace('/', '-')}"
        try:
            failed = _run_model(bs, batch_id, work, ref, rows, llm)
        except Cancelled:  # what was written before the cancellation is the batch's partial output
            failed, status = [], "cancelled"
        written, refused = _written(bs, work, endpoint, asked)
        outputs, errors = outputs + written, errors + refused + failed
        bs.update(batch_id, request_counts={"total": total, "completed": len(outputs), "failed": len(errors)})
        if status == "cancelled":
            break
    return _finish(bs, batch_id, status, outputs, errors)


def _run_model(bs: BatchStore, batch_id: str, work: str, ref: str, rows: list, llm: Optional[dict]) -> list:
    """Answer one model's rows with ``maas batch`` into ``work``/out; the error lines of rows it could not run."""
    from maas.batch import run_batch

    bs.write(f"{work}/in/rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    try:
        run_batch(bs.store, ref, bs.uri(f"{work}/in/rows.jsonl"), bs.uri(f"{work}/out"), fmt="jsonl", llm=llm,
                  progress=lambda _line: _check_cancel(bs, batch_id))
    except (BatchError, RegistryError) as err:
        status = 404 if isinstance(err, RegistryError) else 400
        return [error_line(r["id"], status, str(err)) for r in rows]
    return []


def _written(bs: BatchStore, work: str, endpoint: str, asked: dict) -> tuple[list, list]:
    """(output lines, error lines) of what ``maas batch`` wrote into ``work``/out."""
    answers, rejects = bs.parts(f"{work}/out/answers"), bs.parts(f"{work}/out/rejects")
    return ([output_line(a["id"], endpoint, asked[a["id"]], a) for a in answers],
            [error_line(r["id"], 400, r["reason"]) for r in rejects])


def _check_cancel(bs: BatchStore, batch_id: str) -> None:
    if bs.cancelled(batch_id):
        raise Cancelled()


def _finish(bs: BatchStore, batch_id: str, status: str, outputs: list, errors: list) -> dict:
    """Write the output and error files (OpenAI's: JSON Lines, one line per request) and end the batch."""
    now = int(time.time())
    obj = bs.update(batch_id, status="finalizing", finalizing_at=now) if status == "completed" else \
        bs.batch(None, batch_id)
    owner = obj["maas_owner"]
    files = {}
    for key, lines in (("output_file_id", outputs), ("error_file_id", errors)):
        if lines:
            data = "".join(json.dumps(ln) + "\n" for ln in lines).encode()
            files[key] = bs.put_file(owner, f"{batch_id}_{key[:-8]}.jsonl", "batch_output", data)["id"]
    counts = {"total": (obj.get("request_counts") or {}).get("total", 0), "completed": len(outputs),
              "failed": len(errors)}
    return bs.update(batch_id, status=status, request_counts=counts, **files,
                     **{f"{status}_at": int(time.time())})
