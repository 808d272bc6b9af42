"""Open Inference Protocol v2 (KServe) over REST: request parsing, responses and metadata.

Pure functions with no Ray or web framework in them, so every client mistake can be unit-tested to map to
a 4xx with a JSON ``{"error": ...}`` body rather than a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import numpy as np
import orjson

from maas.serve.errors import ProtocolError
from maas.version import __version__

NUMERIC = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
           "FP32": np.float32, "FP64": np.float64}


SERVER_METADATA = {"name": "maas", "version": __version__, "extensions": ["binary_tensor_data"]}  # REST and gRPC


MAX_DIMS, MAX_DIM = 32, 2 ** 31 - 1  # numpy cannot make arrays past these (a shape of [2**63, 0] was a 500)


def _flatten(data: Any, max_depth: int) -> list:
    """Nested lists -> flat list, iteratively (a hostile body cannot exhaust the stack)."""
    out, stack = [], [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= max_depth:
                raise ProtocolError(400, f"'data' is nested deeper than the tensor's {max_depth - 1} dimensions")
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            out.append(item)
    return out


def _input_array(spec: dict, tensor: dict) -> np.ndarray:
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(datatype, str) or datatype not in NUMERIC:
        raise ProtocolError(400, f"input '{name}': datatype {datatype!r} not accepted; send "
                                 f"{spec['datatype']} (or another numeric type: {', '.join(NUMERIC)})")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(400, f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_DIMS or any(d > MAX_DIM for d in shape) or math.prod(shape) > MAX_DIM:
        raise ProtocolError(400, f"input '{name}': shape {shape[:MAX_DIMS + 1]} is out of range: at most "
                                 f"{MAX_DIMS} dimensions and {MAX_DIM} values")
    if "data" not in tensor:
        raise ProtocolError(400, f"input '{name}': 'data' is missing")
    if isinstance(tensor["data"], np.ndarray):  # decoded from the binary extension (maas.serve.protocols.oip.binary)
        if tensor["data"].size != math.prod(shape):
            raise ProtocolError(400, f"input '{name}': shape {shape} needs {math.prod(shape)} values, "
                                     f"the binary data holds {tensor['data'].size}")
        arr = tensor["data"].astype(NUMERIC[datatype], copy=False).reshape(shape)
    else:
        arr = _json_array(name, datatype, shape, tensor["data"])
    want = spec["shape"]  # e.g. [-1, 64]
    if arr.ndim == len(want) - 1 and list(arr.shape) == want[1:]:
        arr = arr[None, ...]  # one unbatched row
    if arr.ndim != len(want) or any(w != -1 and w != d for w, d in zip(want, arr.shape)):
        raise ProtocolError(400, f"input '{name}': shape {list(arr.shape)} does not match the model's {want} "
                                 "(-1 = any batch size)")
    arr = arr.astype(NUMERIC[spec["datatype"]], copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(400, f"input '{name}': values must be finite")
    return arr


_NUMBERS = {float, int}  # JSON numbers as parsed (a bool's type is bool, not int)


def _json_array(name, datatype: str, shape: list, data) -> np.ndarray:
    dtype = NUMERIC[datatype]
    integral = np.issubdtype(dtype, np.integer)
    n = math.prod(shape)
    if type(data) is list and len(data) == n and datatype != "BOOL":  # flat: its types checked in C (~30x faster)
        kinds = set(map(type, data))
        if kinds <= _NUMBERS and not (integral and float in kinds):
            return _as_array(name, datatype, data, shape)
    flat = _flatten(data, max_depth=len(shape) + 1)
    if len(flat) != n:
        raise ProtocolError(400, f"input '{name}': shape {shape} needs {n} values, 'data' holds {len(flat)}")
    if any(isinstance(v, (str, dict, type(None))) for v in flat) or \
            (datatype != "BOOL" and any(isinstance(v, bool) for v in flat)):
        raise ProtocolError(400, f"input '{name}': 'data' must hold only numbers for datatype {datatype}")
    if integral and any(isinstance(v, float) for v in flat):  # 1.5, or an integer past 64 bits read as a double
        raise ProtocolError(400, f"input '{name}': datatype {datatype} takes integers within its range")
    return _as_array(name, datatype, flat, shape)


def _as_array(name, datatype: str, flat: list, shape: list) -> np.ndarray:
    try:
        return np.asarray(flat, dtype=NUMERIC[datatype]).reshape(shape)
    except (ValueError, OverflowError, TypeError) as exc:
        raise ProtocolError(400, f"input '{name}': values do not fit datatype {datatype}: {exc}") from None


def _raw_columns(raw: list[dict], signature: dict, by_name: dict) -> np.ndarray:
    """Named raw-column tensors -> the model's feature matrix, through the encoders fitted on train
    (one-hot: a 0/1 column per train category, unseen -> all 0; ordinal: train index, unseen -> -1)."""
    names = [r["name"] for r in raw]
    unknown = sorted(set(by_name) - set(names))
    missing = [n for n in names if n not in by_name]
    if unknown or missing:
        raise ProtocolError(400, f"send either '{signature['inputs'][0]['name']}' (the encoded features) or one "
                                 f"tensor per column {names}; " + (f"unknown: {unknown} " if unknown else "")
                                 + (f"missing: {missing}" if missing else ""))
    encoders = signature.get("encoders", {})
    columns, rows = [], None
    for r in raw:
        tensor = by_name[r["name"]]
        shape = tensor.get("shape")
        if not isinstance(shape, list) or len(shape) not in (1, 2) or not all(isinstance(d, int) and d >= 0
                                                                              for d in shape) or \
                (len(shape) == 2 and shape[1] != 1):
            raise ProtocolError(400, f"input '{r['name']}': shape must be [N] (or [N, 1]), got {shape!r}")
        n = shape[0]
        if rows is not None and n != rows:
            raise ProtocolError(400, f"input '{r['name']}' has {n} rows, the others {rows}")
        rows = n
        if r["datatype"] == "BYTES":
            if tensor.get("datatype") != "BYTES":
                raise ProtocolError(400, f"input '{r['name']}': datatype must be BYTES (text), got "
                                         f"{tensor.get('datatype')!r}")
            values = _flatten(tensor.get("data"), max_depth=len(shape) + 1) if "data" in tensor else None
            if values is None or len(values) != n or not all(isinstance(v, str) for v in values):
                raise ProtocolError(400, f"input '{r['name']}': 'data' must hold {n} strings")
            enc = encoders[r["name"]]
            cats = {c: i for i, c in enumerate(enc["categories"])}
            if enc["kind"] == "ordinal":
                columns.append(np.array([cats.get(v, -1) for v in values], dtype=np.float32)[:, None])
            else:
                block = np.zeros((n, len(cats)), dtype=np.float32)
                for i, v in enumerate(values):
                    j = cats.get(v)
                    if j is not None:
                        block[i, j] = 1.0
                columns.append(block)
        else:
            col = _input_array({"name": r["name"], "datatype": "FP32", "shape": [-1, 1]},
                               {**tensor, "shape": [n, 1]} if len(shape) == 1 else tensor)
            columns.append(col)
    return np.concatenate(columns, axis=1) if columns else np.zeros((0, 0), np.float32)


def json_object(body: bytes, holding: str) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it. Parsed by orjson (~10x
    faster); what orjson refuses (NaN, numbers past a double, a byte-order mark) is parsed again by the
    standard parser, which either takes it (the field's own check then names the problem) or says where the
    JSON breaks."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        req = _json_loads(body, holding)
    if not isinstance(req, dict):
        raise ProtocolError(400, f"request body must be a JSON object with {holding}")
    return req


def _json_loads(body: bytes, holding: str):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(400, "request body is nested too deeply") from None


def _request_id(req: dict) -> Optional[str]:
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError(400, "'id' must be a string")
    return req_id


def parse_infer_request(body, signature: dict) -> tuple[np.ndarray, Optional[str], Optional[list[str]]]:
    """Body of ``POST .../infer`` (bytes, or the object ``oip_binary.request_object`` decoded) -> (input array,
    request id, requested output names or None for all)."""
    req = body if isinstance(body, dict) else json_object(body, "an 'inputs' list")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ProtocolError(400, "'inputs' must be a non-empty list of tensors "
                                 "({'name', 'shape', 'datatype', 'data'})")
    spec = signature["inputs"][0]
    if not all(isinstance(t.get("name"), str) for t in inputs):
        raise ProtocolError(400, "every input tensor needs a string 'name'")
    by_name = {t["name"]: t for t in inputs}
    raw = signature.get("raw_inputs")
    if raw and spec["name"] not in by_name:  # one tensor per raw column; the saved encoders apply here
        array = _raw_columns(raw, signature, by_name)
    else:
        if spec["name"] not in by_name:
            raise ProtocolError(400, f"unknown input name(s) {sorted(map(str, by_name))}; "
                                     f"this model takes '{spec['name']}' ({spec['datatype']} {spec['shape']})")
        if len(inputs) != len(signature["inputs"]):
            raise ProtocolError(400, f"expected {len(signature['inputs'])} input tensor(s), got {len(inputs)}")
        array = _input_array(spec, by_name[spec["name"]])

    req_id = _request_id(req)
    params = req.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError(400, "'parameters' must be an object")
    outputs = req.get("outputs")
    wanted = None
    if outputs is not None:
        known = [o["name"] for o in signature["outputs"]]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
            raise ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
        wanted = [o["name"] for o in outputs]
        if not all(isinstance(w, str) for w in wanted):
            raise ProtocolError(400, "output names must be strings")
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ProtocolError(400, f"unknown output(s) {unknown}; this model returns {known}")
    return array, req_id, wanted


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def classifier_outputs(logits: np.ndarray, signature: dict, wanted: Optional[list[str]]) -> list[dict]:
    """Logits -> the OIP output tensors of a classifier: ``label`` (class values) and ``probabilities``."""
    classes = signature["classes"]
    out = []
    for spec in signature["outputs"]:
        if wanted is not None and spec["name"] not in wanted:
            continue
        if spec["name"] == "label":
            values = [classes[i] for i in logits.argmax(axis=1).tolist()]
            out.append({"name": "label", "datatype": spec["datatype"], "shape": [len(values)], "data": values})
        elif spec["name"] == "probabilities":
            probs = softmax(logits.astype(np.float32, copy=False))
            out.append({"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                        "data": probs.ravel().tolist()})
    return out


def model_metadata(name: str, version: int, platform: str, signature: dict) -> dict:
    meta = {"name": name, "versions": [str(version)], "platform": platform,
            "inputs": signature["inputs"], "outputs": signature["outputs"]}
    if signature.get("raw_inputs"):  # the alternative input form: one tensor per raw column
        meta["parameters"] = {"raw_inputs": signature["raw_inputs"], "features": signature.get("features")}
    return meta


# ------------------------------------------------------------------------------------- sentence encoders

MAX_TEXTS = 2048  # texts per request: one request may not monopolise a replica
MAX_TEXT_CHARS = 100_000  # characters per text: its tokenizer runs on the replica's loop, and encoders truncate


def check_rows(rows: int, limit: int) -> None:
    """413 for a request of more than ``limit`` rows (``deploy.max_rows_per_request``)."""
    if rows > limit:
        raise ProtocolError(413, f"the request holds {rows} rows; deploy.max_rows_per_request allows {limit} per "
                                 "request: split it")


def _check_texts(texts: Any, where: str) -> list[str]:
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ProtocolError(400, f"{where} must be a string or a list of strings")
    if len(texts) > MAX_TEXTS:
        raise ProtocolError(413, f"{where} holds {len(texts)} texts; at most {MAX_TEXTS} per request")
    if any(not t.strip() for t in texts):
        raise ProtocolError(400, f"{where} holds an empty string; every text needs content")
    long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
    if long is not None:
        raise ProtocolError(413, f"{where}[{long}] holds {len(texts[long])} characters; at most {MAX_TEXT_CHARS} "
                                 "per text (the model reads only its first few hundred tokens): send less")
    return texts


def parse_text_infer_request(body, signature: dict) -> tuple[list[str], Optional[str]]:
    """OIP v2 ``infer`` for an encoder: one BYTES tensor ``text`` of shape [n] -> (texts, request id)."""
    req = body if isinstance(body, dict) else json_object(body, "an 'inputs' list")
    inputs = req.get("inputs")
    want = signature["inputs"][0]["name"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"'inputs' must hold exactly one tensor: {{'name': '{want}', 'datatype': 'BYTES', "
                                 "'shape': [n], 'data': [texts]}")
    tensor = inputs[0]
    if tensor.get("name") != want:
        raise ProtocolError(400, f"unknown input name {tensor.get('name')!r}; this model takes '{want}' (BYTES [n])")
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(400, f"input '{want}': datatype {tensor.get('datatype')!r} not accepted; send BYTES")
    data = tensor.get("data")
    texts = _check_texts(_flatten(data, 3) if isinstance(data, list) else data, f"input '{want}' data")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or math.prod(shape) != len(texts):
        raise ProtocolError(400, f"input '{want}': shape {shape!r} does not match the {len(texts)} texts in 'data'")
    req_id = _request_id(req)
    return texts, req_id


def embedding_outputs(emb: np.ndarray) -> list[dict]:
    return [{"name": "embedding", "datatype": "FP32", "shape": list(emb.shape), "data": emb.ravel().tolist()}]


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_embeddings_request(body: bytes) -> tuple[list, Optional[str], str]:
    """OpenAI ``POST /v1/embeddings`` -> (inputs, model or None, encoding_format 'float' | 'base64').

    ``input``: a text, a list of texts, one list of token ids, or a list of token id lists; each input comes
    back as a str or a tuple of ints (ids in the model's own vocabulary, checked against it by the caller)."""
    req = json_object(body, "'input' and 'model'")
    if "input" not in req:
        raise ProtocolError(400, "'input' is missing: a string, a list of strings, or token ids")
    raw = req["input"]
    if _is_ids(raw):
        raw = [raw]
    if isinstance(raw, list) and raw and any(isinstance(t, list) for t in raw):
        if not all(_is_ids(t) for t in raw):
            raise ProtocolError(400, "'input' as token ids must be a list of integers, or a list of such lists, "
                                     "each non-empty")
        if len(raw) > MAX_TEXTS:
            raise ProtocolError(413, f"'input' holds {len(raw)} inputs; at most {MAX_TEXTS} per request")
        texts: list = [tuple(t) for t in raw]
    else:
        texts = _check_texts([raw] if isinstance(raw, str) else raw, "'input'")
    if not texts:
        raise ProtocolError(400, "'input' is an empty list; send at least one text")
    model = req.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError(400, "'model' must be a string")
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ProtocolError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}")
    dims = req.get("dimensions")
    if dims is not None:
        raise ProtocolError(400, "'dimensions' is not supported: this model's embeddings have a fixed size")
    return texts, model, fmt


def embeddings_response(emb: np.ndarray, model: str, fmt: str, tokens: int) -> dict:
    """The OpenAI embeddings response: base64 is the little-endian float32 bytes of each vector."""
    import base64

    data = []
    for i, vec in enumerate(emb.astype("<f4", copy=False)):
        value = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ------------------------------------------------------------------------------------------ OpenAI

def openai_model(req: dict) -> Optional[str]:
    model = req.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError(400, "'model' must be a string")
    return model
