"""Row accounting, shared by every data op: a row is never removed, it is marked with a reason.

A row an op drops or the schema refuses stays in its batch with a reason in ``__reason``, its kind in
``__kind`` ('rejected' by the schema, 'dropped' by an op) and its values as JSON in ``__raw``."""

from __future__ import annotations

import difflib
import json

import numpy as np
import pandas as pd

from maas.exceptions import DataError

REASON, RAW, KIND = "__reason", "__raw", "__kind"  # KIND: 'rejected' (schema) or 'dropped' (an op)


def mark(df: pd.DataFrame, mask: np.ndarray, reason: str, kind: str) -> None:
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


def column_check(df: pd.DataFrame, cols, where: str) -> None:
    present = [c for c in df.columns if not c.startswith("__")]
    missing = [c for c in cols if c not in present]
    if missing:
        hints = [f"'{m}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(m, present, n=1))
                             else "") for m in missing]
        raise DataError(f"{where}: column(s) {', '.join(hints)} not found; columns: {', '.join(present[:30])}")
