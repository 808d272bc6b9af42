"""Importable helpers for data-op tests (`custom` ops reference callables by import path)."""

import pandas as pd


def drop_negative_income(df: pd.DataFrame) -> pd.DataFrame:
    """Drops rows (keeping the index, as custom ops must) and adds a derived column."""
    out = df[pd.to_numeric(df["income"], errors="coerce").fillna(0) >= 0].copy()
    out["income_k"] = pd.to_numeric(out["income"], errors="coerce") / 1000.0
    return out


def reindexes(df: pd.DataFrame) -> pd.DataFrame:
    """Wrong: builds a fresh index, so the data stage cannot tell which input rows survived."""
    return df.set_axis(range(10_000, 10_000 + len(df)))
