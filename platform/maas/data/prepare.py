"""The data stage: read -> validate (quarantine bad rows) -> split -> fit normalisation on train.

Every row read ends up either in exactly one split or in the rejects Parquet with its reason:
``rows_in == rows_ok + rows_rejected`` is checked, never assumed.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from maas.data.source import bootstrap_sklearn, filesystem_for, fingerprint_files, resolve_files
from maas.exceptions import DataError
from maas.spec import DataSpec

LABEL, SPLIT, REASON, RAW, Y = "__label", "__split", "__reason", "__raw", "__y"


@dataclass
class DataResult:
    """What the data stage hands to training and evaluation."""

    train: Any  # ray.data.Dataset with the feature columns (float32) and __y (int64 class index)
    val: Any
    test: Any
    features: list[str]
    classes: list[Any]
    mean: list[float]
    std: list[float]
    fingerprint: str
    counts: dict = field(default_factory=dict)
    rejects_path: Optional[str] = None

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Materialise a (small) split on the driver as (X float32 [N, F], y int64 [N])."""
        df = getattr(self, split).to_pandas()
        return df[self.features].to_numpy(np.float32), df[Y].to_numpy(np.int64)


def _validate_batch(df: pd.DataFrame, features: list[str], label: str, seed: int,
                    cuts: tuple[float, float]) -> pd.DataFrame:
    """Per row: the features as float32, the label as text, the split, and a reject reason ('' if fine)."""
    reasons = pd.Series("", index=df.index, dtype=object)
    out = pd.DataFrame(index=df.index)
    for col in features:
        raw = df[col]
        # numpy float64 whatever the batch's backing (Ray hands pyarrow-backed frames, where NaN != null)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        missing = raw.isna().to_numpy(bool).copy()
        if pd.api.types.is_numeric_dtype(raw.dtype):
            missing |= np.isnan(values)  # a NaN in a numeric column is a missing value
        bad_type = np.isnan(values) & ~missing  # text that does not parse as a number
        for mask, why in ((bad_type, f"column '{col}' is not numeric"), (missing, f"column '{col}' is null"),
                          (np.isinf(values), f"column '{col}' is infinite")):
            reasons = reasons.where(~(mask & (reasons == "")), why)
        out[col] = values.astype(np.float32)
    reasons = reasons.where(~(df[label].isna() & (reasons == "")), f"label '{label}' is null")
    out[LABEL] = df[label].astype(str)
    key = f"{seed:016d}"[-16:]
    h = pd.util.hash_pandas_object(out[features + [LABEL]], index=False, hash_key=key).to_numpy(np.uint64)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
    out[SPLIT] = np.where(u < cuts[0], "train", np.where(u < cuts[1], "val", "test"))
    out[REASON] = reasons.astype(str)
    out[RAW] = [json.dumps(r, default=str) if why else "" for r, why in
                zip(df.to_dict(orient="records"), reasons)]
    return out


def _sort_classes(labels: list[str]) -> list[Any]:
    try:
        return sorted(int(x) for x in labels)
    except ValueError:
        try:
            return sorted(float(x) for x in labels)
        except ValueError:
            return sorted(labels)


def _check_columns(schema_names: list[str], spec: DataSpec, source: str) -> list[str]:
    problems = []
    wanted = [spec.label] + list(spec.features or [])
    for col in wanted:
        if col not in schema_names:
            close = difflib.get_close_matches(col, schema_names, n=1)
            hint = f" did you mean '{close[0]}'?" if close else f" columns: {', '.join(schema_names[:20])}"
            field_name = "data.label" if col == spec.label else "data.features"
            problems.append(f"{field_name}: column '{col}' not found in {source};{hint}")
    if problems:
        raise DataError("\n".join(problems))
    features = list(spec.features) if spec.features else [c for c in schema_names if c != spec.label]
    if not features:
        raise DataError(f"data.features: {source} has no feature columns besides the label '{spec.label}'")
    return features


def read_dataset(spec: DataSpec):
    """A lazy Ray Dataset over ``spec.path`` (bootstrapping a bundled set first when asked to)."""
    import ray.data

    fs, path = filesystem_for(spec.path)
    if spec.bootstrap and fs.get_file_info(path).type.name == "NotFound":
        bootstrap_sklearn(spec.bootstrap, spec.path)
    fs, files, fmt = resolve_files(spec.path, spec.format)
    reader = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}[fmt]
    try:
        ds = reader(files, filesystem=fs)
    except Exception as exc:
        raise DataError(f"data.path: cannot read {spec.path} as {fmt}: {type(exc).__name__}: {exc}") from None
    return ds, fs, files


def prepare_data(spec: DataSpec, run_dir: str) -> DataResult:
    """Run the data stage. ``run_dir`` (local path or URI) receives rejects/ and data_report.json.

    Raises:
        DataError: unreadable input, missing columns, empty data, or too many rejected rows.
    """
    from ray.data.aggregate import Mean, Std

    ds, fs, files = read_dataset(spec)
    try:
        names = list(ds.schema().names)
    except Exception as exc:
        raise DataError(f"data.path: cannot read the schema of {spec.path}: {type(exc).__name__}: {exc}") from None
    features = _check_columns(names, spec, spec.path)
    cuts = (spec.split.train, spec.split.train + spec.split.val)
    checked = ds.map_batches(_validate_batch, batch_format="pandas",
                             fn_kwargs=dict(features=features, label=spec.label, seed=spec.split.seed,
                                            cuts=cuts)).materialize()
    rows_in = checked.count()
    if rows_in == 0:
        raise DataError(f"data.path: {spec.path} holds no rows")

    rejects = checked.filter(expr=f"{REASON} != ''").select_columns([REASON, RAW]).materialize()
    good = checked.filter(expr=f"{REASON} == ''").drop_columns([REASON, RAW]).materialize()
    rows_rejected, rows_ok = rejects.count(), good.count()
    if rows_ok + rows_rejected != rows_in:  # a real invariant of this stage, not an assumption
        raise DataError(f"row accounting broke: {rows_in} in, {rows_ok} ok + {rows_rejected} rejected")

    reasons: Counter = Counter()
    rejects_path = None
    if rows_rejected:
        for batch in rejects.iter_batches(batch_format="pandas", batch_size=4096):
            reasons.update(batch[REASON])
        rejects_path = f"{run_dir}/rejects"
        rejects.write_parquet(rejects_path)
    counts = {"rows_in": rows_in, "rows_ok": rows_ok, "rows_rejected": rows_rejected,
              "reject_reasons": dict(reasons.most_common())}
    if rows_ok == 0 or rows_rejected / rows_in > spec.max_reject_fraction:
        top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
        raise DataError(f"{rows_rejected} of {rows_in} rows rejected, over data.max_reject_fraction="
                        f"{spec.max_reject_fraction}. Most common: {top}. Rejected rows with reasons: "
                        f"{rejects_path}")

    classes = _sort_classes(sorted(good.unique(LABEL)))
    index = {str(c): i for i, c in enumerate(classes)}

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        df[Y] = df[LABEL].map(index).astype(np.int64)
        return df.drop(columns=[LABEL])

    encoded = good.map_batches(encode, batch_format="pandas").materialize()
    splits = {name: encoded.filter(expr=f"{SPLIT} == '{name}'").drop_columns([SPLIT]).materialize()
              for name in ("train", "val", "test")}
    per_split = {name: d.count() for name, d in splits.items()}
    counts["splits"] = per_split
    for name in ("train", "test"):
        if per_split[name] == 0:
            raise DataError(f"the {name} split is empty ({rows_ok} usable rows); add data or change data.split")

    if spec.normalize == "standard":
        stats = splits["train"].aggregate(*[Mean(c) for c in features], *[Std(c, ddof=0) for c in features])
        mean = [float(stats[f"mean({c})"]) for c in features]
        # constant columns (std 0, e.g. always-blank pixels) are left unscaled instead of dividing by zero
        std = [float(stats[f"std({c})"]) if stats[f"std({c})"] and stats[f"std({c})"] > 1e-6 else 1.0
               for c in features]
    else:
        mean, std = [0.0] * len(features), [1.0] * len(features)

    fingerprint = fingerprint_files(fs, files, spec.model_dump(mode="json"))
    result = DataResult(train=splits["train"], val=splits["val"], test=splits["test"], features=features,
                        classes=classes, mean=mean, std=std, fingerprint=fingerprint, counts=counts,
                        rejects_path=rejects_path)
    write_report(run_dir, result)
    return result


def write_report(run_dir: str, result: DataResult) -> None:
    fs, path = filesystem_for(run_dir)
    fs.create_dir(path, recursive=True)
    report = {"fingerprint": result.fingerprint, "counts": result.counts, "features": result.features,
              "classes": result.classes, "rejects_path": result.rejects_path,
              "normalization": {"mean": result.mean, "std": result.std}}
    with fs.open_output_stream(f"{path}/data_report.json") as f:
        f.write(json.dumps(report, indent=2, default=str).encode())


def run_dir_for(store: str, run_id: str) -> str:
    return f"{store.rstrip('/')}/runs/{run_id}" if "://" in store else os.path.join(
        os.path.abspath(store), "runs", run_id)


def save_prepared(result: DataResult, run_dir: str) -> None:
    """Persist the splits (Parquet) beside data_report.json, so later stages and jobs can reload them."""
    for name in ("train", "val", "test"):
        getattr(result, name).write_parquet(f"{run_dir}/splits/{name}")


def load_prepared(run_dir: str) -> DataResult:
    """The DataResult of an earlier data stage, from its run folder (local path or URI).

    Raises:
        DataError: the run folder holds no prepared data (name the run id of a finished data stage).
    """
    import ray.data

    fs, path = filesystem_for(run_dir)
    try:
        with fs.open_input_stream(f"{path}/data_report.json") as f:
            report = json.loads(f.read())
    except (FileNotFoundError, OSError):
        raise DataError(f"no prepared data in {run_dir}: run the data stage first "
                        "(python -m jobs.preprocess --spec FILE) and pass its run id") from None
    splits = {}
    for name in ("train", "val", "test"):
        split_dir = f"{path}/splits/{name}"
        if fs.get_file_info(split_dir).type.name == "NotFound":
            raise DataError(f"{run_dir} has no saved '{name}' split; re-run the data stage")
        splits[name] = ray.data.read_parquet(split_dir, filesystem=fs).materialize()
    norm = report["normalization"]
    return DataResult(train=splits["train"], val=splits["val"], test=splits["test"], features=report["features"],
                      classes=report["classes"], mean=norm["mean"], std=norm["std"],
                      fingerprint=report["fingerprint"], counts=report["counts"],
                      rejects_path=report.get("rejects_path"))
