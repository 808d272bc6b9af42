"""One batch of input rows -> the answers of a registered classifier or encoder, and the rows it could not
answer with the reason (a language model's rows: ``maas.batch.llm``). A valid row goes through the endpoint's
own request parsing (``maas.serve.protocols.oip``; numbers as arrays, as its binary extension hands them
over), predictor and output code, so it gets the answer an infer request would; a row the endpoint would
refuse (a missing value, text where a number belongs, an empty text) is a reject, never dropped and never
allowed to fail its neighbours. Pure functions: no Ray."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from maas.exceptions import BatchError
from maas.serve.errors import ProtocolError
from maas.serve.protocols.oip.codec import MAX_TEXT_CHARS, classifier_outputs, embedding_outputs
from maas.serve.protocols.oip.handlers import parse_object

TEXT_TASKS = ("embed", "classify_text")


def input_columns(signature: dict, task: str) -> list[str]:
    """The columns a batch input needs for a version: an encoder's text column; a classifier's raw columns
    (encoded as the endpoint encodes them), else its feature columns in order, else one column holding each
    row's features as a list."""
    if task in TEXT_TASKS:
        return [signature["inputs"][0]["name"]]
    if task != "classify":
        raise BatchError(f"maas batch answers classifiers, encoders and language models; a {task!r} model is not "
                         "supported yet")
    if signature.get("raw_inputs"):
        return [r["name"] for r in signature["raw_inputs"]]
    return list(signature.get("features") or [signature["inputs"][0]["name"]])


def check_columns(have: list[str], signature: dict, task: str, id_column: str) -> None:
    """BatchError naming what is missing from the input's columns ``have``."""
    check_id_column(have, id_column)
    missing = [c for c in input_columns(signature, task) if c not in have]
    if missing:
        raise BatchError(f"--input: the model reads column(s) {', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''}, which the input lacks (it has "
                         f"{', '.join(have[:12])}{' ...' if len(have) > 12 else ''})")


def check_id_column(have: list[str], id_column: str) -> None:
    if id_column not in have:
        raise BatchError(f"--id-column: the input has no column {id_column!r} (its columns: "
                         f"{', '.join(have[:12])}{' ...' if len(have) > 12 else ''}); name the column that "
                         "identifies each row")


def _numeric(col: pd.Series, name: str) -> tuple[np.ndarray, pd.Series]:
    """(float values, the reason per row or None) for a column the model reads as a number."""
    values = pd.to_numeric(col, errors="coerce").astype("float64")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    reasons = pd.Series([None] * len(col), index=col.index, dtype=object)
    for i in np.flatnonzero(bad.to_numpy()):
        reasons.iloc[i] = _not_a_number(name, col.iloc[i])
    return values.to_numpy(), reasons


def _not_a_number(name: str, raw: Any) -> str:
    """Why a cell the model reads as a number cannot be read as one."""
    if _missing(raw):
        return f"column {name!r} is empty"
    return f"column {name!r} is not a finite number: {str(raw)[:40]!r}"


def _numeric_block(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, pd.Series]:
    """``_numeric`` for many columns at once: (float matrix, each row's first reason or None). Numeric
    columns convert in one call; a column holding text falls back to a conversion per column."""
    sub = df[cols]
    try:
        matrix = sub.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):  # text in some column: convert column by column, bad cells become NaN
        matrix = np.column_stack([_numeric(sub[c], c)[0] for c in cols]) if cols else np.zeros((len(df), 0))
    bad = ~np.isfinite(matrix)
    reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
    for i in np.flatnonzero(bad.any(axis=1)):  # the few bad rows, named by their first bad column
        j = int(np.argmax(bad[i]))
        reasons.iloc[i] = _not_a_number(cols[j], sub.iloc[i, j])
    return matrix, reasons


def _missing(v: Any) -> bool:
    """None, NaN, pandas' NA: an empty cell (never an array: a list cell is not missing)."""
    return not isinstance(v, (list, tuple, np.ndarray)) and bool(pd.isna(v))


def _text(col: pd.Series, name: str) -> pd.Series:
    def why(v: Any):
        if not isinstance(v, str):
            return f"column {name!r} is empty" if _missing(v) else f"column {name!r} is not text: {str(v)[:40]!r}"
        if not v.strip():
            return f"column {name!r} is an empty text"
        if len(v) > MAX_TEXT_CHARS:
            return f"column {name!r} holds {len(v)} characters; at most {MAX_TEXT_CHARS} per text"
        return None
    return col.map(why).astype(object)


def _first_reason(reasons: list[pd.Series], n: int) -> list:
    """Each row's first reason to be refused (a text), or None (pandas may hold a missing reason as NaN)."""
    out = [None] * n
    for r in reasons:
        values = r.to_numpy()
        for i in np.flatnonzero(r.notna().to_numpy()):  # the few bad rows, not every row
            if out[i] is None and isinstance(values[i], str):
                out[i] = values[i]
    return out


def _request(df: pd.DataFrame, signature: dict, task: str) -> tuple[dict, list]:
    """The OIP request object the rows of ``df`` make, and each row's reason to be refused (or None)."""
    cols, n = input_columns(signature, task), len(df)
    if task in TEXT_TASKS:
        reasons = [_text(df[cols[0]], cols[0])]
        texts = [v if isinstance(v, str) else "" for v in df[cols[0]].tolist()]
        tensors = [{"name": cols[0], "datatype": "BYTES", "shape": [n], "data": texts}]
    elif signature.get("raw_inputs"):
        reasons, tensors = [], []
        for r in signature["raw_inputs"]:
            if r["datatype"] == "BYTES":
                reasons.append(_text(df[r["name"]], r["name"]))
                data = [v if isinstance(v, str) else "" for v in df[r["name"]].tolist()]
            else:
                values, why = _numeric(df[r["name"]], r["name"])
                reasons.append(why)
                data = np.nan_to_num(values).astype(np.float32)  # an array, as the binary extension hands it over
            tensors.append({"name": r["name"], "datatype": r["datatype"], "shape": [n], "data": data})
    elif signature.get("features"):
        matrix, why = _numeric_block(df, cols)
        reasons, matrix = [why], np.nan_to_num(matrix)
        tensors = [{"name": signature["inputs"][0]["name"], "datatype": "FP32", "shape": [n, len(cols)],
                    "data": matrix.astype(np.float32)}]
    else:
        return _list_column(df, signature)
    return {"inputs": tensors}, _first_reason(reasons, n)


def _list_column(df: pd.DataFrame, signature: dict) -> tuple[dict, list]:
    """Rows that hold their features as one list each (the input tensor's name)."""
    spec = signature["inputs"][0]
    width = spec["shape"][-1]
    rows, reasons = [], []
    for v in df[spec["name"]].tolist():
        try:
            row = np.asarray(v, dtype=np.float64).reshape(-1)
            ok = row.shape[0] == width and np.isfinite(row).all()
        except (TypeError, ValueError):
            row, ok = None, False
        reasons.append(None if ok else f"column {spec['name']!r} must hold {width} finite numbers per row")
        rows.append(row.tolist() if ok else [0.0] * width)
    return {"inputs": [{"name": spec["name"], "datatype": "FP32", "shape": [len(rows), width],
                        "data": np.asarray(rows, np.float32).reshape(len(rows), width)}]}, reasons


def answer(df: pd.DataFrame, predictor, signature: dict, task: str, id_column: str,
           ref: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(answers, rejects) for the rows of ``df``: answers carry ``id_column``, the outputs (``label`` and
    ``probabilities``, or ``embedding`` and its text's ``tokens``) and ``version``; rejects carry ``id_column``,
    ``reason``, the row's input values as JSON (``row``) and ``version``. Every row is in exactly one of them."""
    req, reasons = _request(df, signature, task)
    good = [i for i, why in enumerate(reasons) if why is None]
    answers = _answers(df.iloc[good], _subset(req, good), predictor, signature, task, id_column, ref) if good \
        else pd.DataFrame()
    bad = [i for i, why in enumerate(reasons) if why is not None]
    cols = input_columns(signature, task)
    rejects = pd.DataFrame({id_column: df[id_column].iloc[bad].to_numpy(),
                            "reason": [reasons[i] for i in bad],
                            "row": [json.dumps({c: _plain(df[c].iloc[i]) for c in cols}, default=str) for i in bad],
                            "version": ref}) if bad else pd.DataFrame()
    return answers, rejects


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    return None if _missing(v) else v.item() if isinstance(v, np.generic) else v


def _subset(req: dict, rows: list[int]) -> dict:
    tensors = []
    for t in req["inputs"]:
        data = t["data"][rows] if isinstance(t["data"], np.ndarray) else [t["data"][i] for i in rows]
        tensors.append({**t, "shape": [len(rows), *t["shape"][1:]], "data": data})
    return {"inputs": tensors}


def _answers(df: pd.DataFrame, req: dict, predictor, signature: dict, task: str, id_column: str,
             ref: str) -> pd.DataFrame:
    try:
        x, _, _ = parse_object(req, signature, task)
    except ProtocolError as err:  # the checks above let through what the endpoint would refuse: a bug
        raise BatchError(f"rows the batch thought valid were refused: {err.message}") from None
    out = {id_column: df[id_column].to_numpy()}
    if task == "embed":
        (emb,) = embedding_outputs(predictor(x))
        out["embedding"] = list(np.asarray(emb["data"], np.float32).reshape(emb["shape"]))
        out["tokens"] = [predictor.tokenizer.count_tokens([t]) for t in x]  # the usage /v1/embeddings reports
    else:
        label, probs = classifier_outputs(predictor(x), signature, None)
        out["label"] = label["data"]
        out["probabilities"] = list(np.asarray(probs["data"], np.float32).reshape(probs["shape"]))
    out["version"] = ref
    return pd.DataFrame(out)
