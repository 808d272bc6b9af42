"""Importable helpers for data-op tests (`custom` ops reference callables by import path)."""

import numpy as np
import pandas as pd


def drop_negative_income(df: pd.DataFrame) -> pd.DataFrame:
    """Drops rows (keeping the index, as custom ops must) and adds a derived column."""
    out = df[pd.to_numeric(df["income"], errors="coerce").fillna(0) >= 0].copy()
    out["income_k"] = pd.to_numeric(out["income"], errors="coerce") / 1000.0
    return out


def reindexes(df: pd.DataFrame) -> pd.DataFrame:
    """Wrong: builds a fresh index, so the data stage cannot tell which input rows survived."""
    return df.set_axis(range(10_000, 10_000 + len(df)))


def people(n=300, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "Age": rng.integers(18, 80, n).astype(object),
        "income": np.abs(rng.normal(50000, 15000, n)).round(2),
        "color": rng.choice(["red", "green", "blue"], n).astype(object),
        "fold": np.where(np.arange(n) % 10 < 7, "train", np.where(np.arange(n) % 10 < 8, "val", "test")),
        "bought": rng.integers(0, 2, n),
    })
    df.loc[0, "Age"] = "unknown"      # rejected: not an integer
    df.loc[1, "Age"] = 150            # rejected: above max
    df.loc[2, "color"] = "purple"     # rejected: not an allowed category
    df.loc[3, "income"] = np.nan      # filled by fill_null
    df.loc[4, "income"] = -5.0        # dropped by the custom op
    df.loc[5, "color"] = None         # dropped by drop_null
    df.loc[6, "fold"] = "holdout"     # rejected: not train/val/test
    df.loc[7, "Age"] = 17             # dropped by the filter
    df.loc[11] = df.loc[10]           # a duplicate of row 10: dropped by dedupe
    return df


SPEC = {
    "label": "bought",
    "features": ["age", "income", "color", "income_k"],
    "split": {"by": "fold"},
    "max_reject_fraction": 0.05,
    "columns": {"age": {"type": "int", "min": 0, "max": 120}, "income": {"type": "float"},
                "income_k": {"type": "float"},
                "color": {"type": "string", "allowed": ["red", "green", "blue"]},
                "fold": {"type": "string"}, "bought": {"type": "int", "allowed": [0, 1]}},
    "ops": [{"rename": {"Age": "age"}},
            {"cast": {"age": "int"}},
            {"fill_null": {"income": 0.0}},
            {"drop_null": ["color"]},
            {"custom": "tests.data_helpers:drop_negative_income"},
            {"dedupe": True},
            {"filter": "age.isna() or age >= 18"},
            {"encode": {"onehot": ["color"]}},
            {"scale": {"minmax": ["income"], "standard": ["age"]}}],
}
