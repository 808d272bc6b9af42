"""Column types and schemas: casting with bad-value masks, inferring a schema from a sample, checking a batch
against a declared one (violations are rejected rows, with their reason)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from maas.data.accounting import REASON, column_check, mark

_TYPE_WORDS = {"float": "numeric", "int": "an integer"}  # how a failed cast reads in a reject reason


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
    column_check(df, list(schema), "data.columns")
    for col, rule in schema.items():
        if rule["type"] == "tensor":
            continue
        values, null, bad = cast_series(df[col], rule["type"])
        live = df[REASON].to_numpy() == ""
        mark(df, bad & live, f"column '{col}' is not {_TYPE_WORDS.get(rule['type'], rule['type'])}", "rejected")
        if not rule.get("nullable", False):
            mark(df, null, f"column '{col}' is null", "rejected")
        if rule["type"] in ("float", "int"):
            v = values.to_numpy(np.float64)
            mark(df, np.isinf(v), f"column '{col}' is infinite", "rejected")
            if rule.get("min") is not None:
                mark(df, v < rule["min"], f"column '{col}' is below min {rule['min']}", "rejected")
            if rule.get("max") is not None:
                mark(df, v > rule["max"], f"column '{col}' is above max {rule['max']}", "rejected")
        if rule.get("allowed") is not None:
            allowed = {str(a) for a in rule["allowed"]} if rule["type"] == "string" else \
                {float(a) for a in rule["allowed"]}
            probe = values if rule["type"] == "string" else values.astype(np.float64)
            outside = ~null & ~probe.isin(allowed).to_numpy(bool)
            mark(df, outside, f"column '{col}' is not one of {rule['allowed']}", "rejected")
        df[col] = values.to_numpy(np.float64) if rule["type"] != "string" else values
    return df
