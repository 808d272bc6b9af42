"""What the data stage fits on the train split: one-hot / ordinal encoders, and per-column statistics
(partial per batch, merged) for scaling and the data report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd


def fitted_plan(ops: list) -> tuple[dict[str, str], dict[str, str]]:
    """({column: standard|minmax}, {column: onehot|ordinal}) from the spec's scale/encode ops (later ops win)."""
    scale, encode = {}, {}
    for op in ops:
        if op.op == "scale":
            scale.update(op.plan())
        elif op.op == "encode":
            encode.update(op.plan())
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
