"""Declarative data ops and schema checks, applied per pandas batch inside Ray Data tasks.

Rows are never removed silently: a row an op drops (``drop_null``, ``filter``, ``dedupe``, a ``custom``
function that leaves it out) or the schema refuses stays in the batch with a reason in ``__reason`` (and its
values as JSON in ``__raw``), and the data stage writes every such row to the run's rejects Parquet. So
``rows_in == rows_ok + rows_rejected + rows_dropped`` holds and is checked.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from maas.data.accounting import KIND, RAW, REASON, column_check, mark
from maas.data.schema import _TYPE_WORDS, cast_series
from maas.data.text import image_op, tokenize_op
from maas.exceptions import DataError
from maas.spec import CastOp, CustomOp, DropNullOp, FillNullOp, FilterOp, ImageOp, RenameOp, SelectOp, TokenizeOp
from maas.spec.filter_expr import columns_of, evaluate_filter


def load_callable(path: str, where: str) -> Callable:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"{where}: cannot import {path!r}: {exc}") from None
    if not callable(fn):
        raise DataError(f"{where}: {path!r} is not callable")
    return fn


# ------------------------------------------------------------------------------------------ row ops
def apply_row_ops(df: pd.DataFrame, ops: list[tuple[int, Any]]) -> pd.DataFrame:
    """Apply row ops (everything but dedupe, scale, encode), each ``(position, typed op)``, to a batch that
    went through start_accounting."""
    for i, op in ops:
        where = f"data.ops[{i}].{op.op}"
        live = df[REASON].to_numpy() == ""
        if isinstance(op, SelectOp):
            column_check(df, op.columns, where)
            df = df[list(op.columns) + [REASON, RAW, KIND]]
        elif isinstance(op, RenameOp):
            column_check(df, list(op.mapping), where)
            df = df.rename(columns=dict(op.mapping))
        elif isinstance(op, CastOp):
            column_check(df, list(op.types), where)
            for col, kind in op.types.items():
                values, null, bad = cast_series(df[col], kind)
                mark(df, bad & live, f"column '{col}' is not {_TYPE_WORDS.get(kind, kind)} ({where})", "rejected")
                if kind == "int":
                    values = values.astype("Int64") if values.isna().any() else values.astype(np.int64)
                elif kind == "bool":
                    values = values.map({1.0: True, 0.0: False})
                df[col] = values
        elif isinstance(op, FillNullOp):
            column_check(df, list(op.values), where)
            for col, value in op.values.items():
                df[col] = df[col].where(df[col].notna(), value)
        elif isinstance(op, DropNullOp):
            column_check(df, op.columns, where)
            for col in op.columns:
                mark(df, df[col].isna().to_numpy(bool), f"dropped by {where}: '{col}' is null", "dropped")
        elif isinstance(op, FilterOp):
            tree = op.tree()
            columns = [c for c in df.columns if not c.startswith("__")]
            missing = sorted(columns_of(tree) - set(columns))
            try:
                if missing:
                    raise LookupError(f"no column(s) {', '.join(map(repr, missing))}")
                keep = evaluate_filter(tree, df)
            except Exception as exc:
                raise DataError(f"{where}: cannot evaluate {op.expr!r}: {type(exc).__name__}: {exc}; columns: "
                                f"{', '.join(columns)}") from None
            mark(df, ~keep, f"dropped by {where}: {op.expr}", "dropped")
        elif isinstance(op, CustomOp):
            fn = load_callable(op.function, where)
            out = fn(df.loc[live, [c for c in df.columns if not c.startswith("__")]].copy())
            if not isinstance(out, pd.DataFrame):
                raise DataError(f"{where}: {op.function} must return a pandas DataFrame, got {type(out).__name__}")
            if not out.index.isin(df.index).all() or out.index.has_duplicates:
                raise DataError(f"{where}: {op.function} must keep the input's index (drop rows, do not re-index), "
                                "so every row stays accounted for")
            gone = live & ~df.index.isin(out.index)
            mark(df, gone, f"dropped by {where}: {op.function}", "dropped")
            merged = out.reindex(df.index)
            acct = df[[REASON, RAW, KIND]]
            df = pd.concat([merged, acct], axis=1)
        elif isinstance(op, ImageOp):
            df = image_op(df, op, where)
        elif isinstance(op, TokenizeOp):
            df = tokenize_op(df, live, op, where)
        else:  # dedupe / scale / encode are not per-batch ops
            raise DataError(f"{where}: not a row op")
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
    column_check(df, cols, where)
    h = pd.util.hash_pandas_object(df.loc[live, cols].astype(str), index=False).to_numpy(np.uint64)
    first_in_batch = ~pd.Series(h).duplicated().to_numpy()
    tag = int(pd.util.hash_array(h).sum() % (1 << 62)) ^ len(h)
    distinct = h[first_in_batch]
    kept = np.asarray(ray.get(claims.claim.remote(distinct, tag)), dtype=bool)
    keep_live = np.zeros(len(h), bool)
    keep_live[np.flatnonzero(first_in_batch)[kept]] = True
    dup = np.zeros(len(df), bool)
    dup[np.flatnonzero(live)] = ~keep_live
    mark(df, dup, f"dropped by {where}: duplicate row", "dropped")
    return df


