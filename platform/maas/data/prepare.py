"""The data stage: read -> validate (quarantine bad rows) -> split -> fit normalisation on train.

Every row read ends up either in exactly one split or in the rejects Parquet with its reason:
``rows_in == rows_ok + rows_rejected`` is checked, never assumed.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from maas.data.accounting import KIND, RAW, REASON, mark, start_accounting
from maas.data.fitting import column_stats, combine_stats, encode_batch, encoded_names, fitted_plan
from maas.data.ops import DedupeClaims, apply_row_ops, dedupe_batch
from maas.data.readers import read_dataset, read_parquet
from maas.data.runs import DataResult, Y, write_data_report
from maas.data.schema import check_schema, infer_schema
from maas.data.source import filesystem_for, fingerprint_files
from maas.exceptions import DataError
from maas.spec import FITTED_OPS, DataSpec, DedupeOp, TokenizeOp

LABEL, SPLIT, STATUS = "__label", "__split", "__status"


def _sort_classes(labels: list[str]) -> list[Any]:
    try:
        return sorted(int(x) for x in labels)
    except ValueError:
        try:
            return sorted(float(x) for x in labels)
        except ValueError:
            return sorted(labels)


def _label_and_features(schema: dict, spec: DataSpec, source: str, encode: dict) -> list[str]:
    names = list(schema)
    problems = []
    for col in [spec.label] + list(spec.features or []):
        if col not in names:
            close = difflib.get_close_matches(col, names, n=1)
            hint = f" did you mean '{close[0]}'?" if close else f" columns: {', '.join(names[:20])}"
            field_name = "data.label" if col == spec.label else "data.features"
            problems.append(f"{field_name}: column '{col}' not found in {source};{hint}")
    if problems:
        raise DataError("\n".join(problems))
    skip = {spec.label, spec.split.by}
    if spec.features:
        features = list(spec.features)
        tokenized = {op.column for op in spec.ops_of(TokenizeOp)}
        text = [f for f in features if schema[f]["type"] == "string" and f not in encode and f not in tokenized]
        if text:
            raise DataError(f"data.features: {', '.join(text)} hold text; add an encode op "
                            f"(ops: [{{encode: {{onehot: [{text[0]}]}}}}]) or cast them to numbers")
    else:
        features = [c for c, rule in schema.items() if c not in skip
                    and (rule["type"] in ("float", "int", "bool") or c in encode)]
    if not features:
        raise DataError(f"data.features: {source} has no numeric feature columns besides the label "
                        f"'{spec.label}'")
    return features


def _finish_batch(df: pd.DataFrame, schema: dict, label: str, features: list[str], seed: int,
                  cuts: tuple[float, float], split_by: Optional[str], text_features: list[str]) -> pd.DataFrame:
    """Schema check, label, split; out: features (float32; text ones as str), __label, __split + accounting."""
    rules = {c: r for c, r in schema.items() if c != label}
    df = check_schema(df, rules)
    live = df[REASON].to_numpy() == ""
    lab = df[label]
    null_label = lab.isna().to_numpy(bool)
    mark(df, null_label & live, f"label '{label}' is null", "rejected")
    allowed = schema.get(label, {}).get("allowed")
    if allowed is not None:
        mark(df, ~lab.astype(str).isin({str(a) for a in allowed}).to_numpy(bool) & ~null_label,
             f"label '{label}' is not one of {allowed}", "rejected")
    for col in features:  # the model cannot take a missing number, whatever the schema allows
        if col not in text_features:
            mark(df, df[col].isna().to_numpy(bool), f"column '{col}' is null", "rejected")
    out = pd.DataFrame(index=df.index)
    for col in features:
        out[col] = df[col].astype(object).where(df[col].notna(), None).map(
            lambda v: None if v is None else str(v)) if col in text_features else \
            df[col].to_numpy(np.float64).astype(np.float32)
    for col, rule in schema.items():  # token ids and other array columns ride along to the splits
        if rule["type"] == "tensor" and col not in features:
            out[col] = df[col]
    out[LABEL] = lab.astype(str).where(~null_label, "")
    if split_by is not None:
        where = df[split_by].astype(str).to_numpy()
        mark(df, ~np.isin(where, ["train", "val", "test"]) & (df[REASON].to_numpy() == ""),
             f"split column '{split_by}' is not train, val or test", "rejected")
        split = where
    else:
        key = f"{seed:016d}"[-16:]
        hashed = out[features + [LABEL]].astype(str) if text_features else out[features + [LABEL]]
        h = pd.util.hash_pandas_object(hashed, index=False, hash_key=key).to_numpy(np.uint64)
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
        split = np.where(u < cuts[0], "train", np.where(u < cuts[1], "val", "test"))
    for c in (REASON, RAW, KIND):
        out[c] = df[c].astype(str)
    out[STATUS] = np.where(out[REASON].to_numpy() == "", split, "quarantine")
    return out


def _as_partial(st: dict) -> dict:
    """A merged column summary back in column_stats' partial form, to merge summaries of several splits."""
    out = {"count": st["count"], "nulls": st["nulls"]}
    if "mean" in st:
        n = st["count"] - st["nulls"]
        out.update(n=n, mean=st["mean"] or 0.0, m2=(st["std"] or 0.0) ** 2 * n, min=st["min"], max=st["max"])
    else:
        out["top"] = st.get("top", {})
    return out


def _fs_path(uri: str) -> str:
    return filesystem_for(uri)[1]


def _parquet_rows(fs, path: str) -> int:
    """Rows in the Parquet files under ``path`` (from their footers; 0 when the folder does not exist)."""
    import pyarrow.dataset as pads

    if fs.get_file_info(path).type.name == "NotFound":
        return 0
    return pads.dataset(path, filesystem=fs, format="parquet", partitioning=None).count_rows()


def _read_split(paths, fs, columns: Optional[list] = None):
    """A lazy Ray Dataset over the written Parquet of one or more splits (the partition column left out)."""
    paths = [paths] if isinstance(paths, str) else paths
    return read_parquet([_fs_path(p) for p in paths], fs, columns=columns, partitioning=None)


def _unwrap(exc: BaseException) -> BaseException:
    """The DataError a Ray task raised, without Ray's wrappers (RayTaskError -> UserCodeException -> ...)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataError) and type(e) is DataError:
            return e
        todo.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    marker = "maas.exceptions.DataError: "
    text = str(exc)
    if marker in text:  # the cause did not survive serialisation: keep its message, drop Ray's frames
        return DataError(text[text.rindex(marker) + len(marker):].splitlines()[0])
    return exc


def _as_data_error(exc: BaseException, context: str) -> DataError:
    """The DataError a Ray task raised (unwrapped), or ``exc`` described after ``context``."""
    exc = _unwrap(exc)
    return exc if isinstance(exc, DataError) else DataError(f"{context}{type(exc).__name__}: {exc}")


def _segments(ops: list) -> list[tuple[str, Any]]:
    """Row ops grouped into per-batch segments, split at each dedupe (which needs the whole data set)."""
    out: list = []
    for i, op in enumerate(ops):
        if op.op in FITTED_OPS:
            continue
        if isinstance(op, DedupeOp):
            out.append(("dedupe", (i, op.keys)))
        elif out and out[-1][0] == "rows":
            out[-1][1].append((i, op))
        else:
            out.append(("rows", [(i, op)]))
    return out


def load_schema(spec: DataSpec) -> Optional[dict]:
    if spec.columns is not None:
        return {c: r.model_dump(exclude_none=True) for c, r in spec.columns.items()}
    if spec.schema_file is None:
        return None
    from maas.spec import ColumnSchema

    fs, path = filesystem_for(spec.schema_file)
    try:
        with fs.open_input_stream(path) as f:
            raw = yaml.safe_load(f.read())
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"data.schema_file: cannot read {spec.schema_file}: {exc}") from None
    raw = raw.get("columns", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict):
        raise DataError(f"data.schema_file: {spec.schema_file} must map column names to rules")
    try:
        return {c: ColumnSchema.model_validate(r).model_dump(exclude_none=True) for c, r in raw.items()}
    except Exception as exc:
        raise DataError(f"data.schema_file: {spec.schema_file}: {exc}") from None


def apply_ops(spec: DataSpec, ds, dedupe: bool = True):
    """The data set after the spec's row ops, every row still present (dropped ones carry their reason).
    ``dedupe=False`` skips dedupe ops (schema inference on a sample must not claim rows)."""
    import ray

    ds = ds.map_batches(start_accounting, batch_format="pandas")
    for kind, payload in _segments(spec.ops):
        if kind == "rows":
            ds = ds.map_batches(apply_row_ops, batch_format="pandas", fn_kwargs={"ops": payload})
        elif dedupe:
            i, keys = payload
            claims = ray.remote(num_cpus=0)(DedupeClaims).remote()
            ds = ds.map_batches(dedupe_batch, batch_format="pandas",
                                fn_kwargs={"claims": claims, "keys": keys, "where": f"data.ops[{i}].dedupe"})
    return ds


def infer_dataset_schema(spec: DataSpec, ds=None, sample_rows: int = 5000) -> dict:
    """The schema inferred from (up to) the first ``sample_rows`` live rows after the ops."""
    if ds is None:
        ds = apply_ops(spec, read_dataset(spec)[0], dedupe=False)
    try:
        sample = ds.limit(sample_rows).to_pandas()
    except Exception as exc:
        raise _as_data_error(exc, f"data.path: cannot read {spec.path}: ") from None
    if len(sample) == 0:
        raise DataError(f"data.path: {spec.path} holds no rows")
    live = sample[sample[REASON] == ""] if REASON in sample else sample
    schema = infer_schema(live if len(live) else sample)
    return schema


def prepare_data(spec: DataSpec, run_dir: str) -> DataResult:
    """Run the data stage. ``run_dir`` (local path or URI) receives rejects/, schema.json and data_report.json.

    Raises:
        DataError: unreadable input, missing columns, empty data, or too many rejected rows.
    """
    ds, fs, files = read_dataset(spec)
    run_fs, _ = filesystem_for(run_dir)
    try:
        ds.schema()
    except Exception as exc:
        raise DataError(f"data.path: cannot read the schema of {spec.path}: {type(exc).__name__}: {exc}") from None
    schema = load_schema(spec)
    inferred = schema is None
    if inferred:
        schema = infer_dataset_schema(spec, apply_ops(spec, ds, dedupe=False))
        if spec.label in schema:
            schema[spec.label]["nullable"] = False
    ds = apply_ops(spec, ds)
    scale_plan, encode_plan = fitted_plan(spec.ops)
    features = _label_and_features(schema, spec, spec.path, encode_plan)
    for col in list(scale_plan) + list(encode_plan):
        if col not in features:
            raise DataError(f"data.ops: scale/encode column '{col}' is not a feature; features: "
                            f"{', '.join(features[:20])}")
    text_features = [f for f in features if schema[f]["type"] == "string"]
    cuts = (spec.split.train, spec.split.train + spec.split.val)
    # One streaming pass: every row is written once, to its split or to the quarantine, as Parquet in the
    # run folder. Nothing is held in the object store, so data larger than it (or than memory) flows through.
    checked_dir = f"{run_dir}/checked"
    try:
        ds.map_batches(_finish_batch, batch_format="pandas", fn_kwargs=dict(
            schema=schema, label=spec.label, features=features, seed=spec.split.seed, cuts=cuts,
            split_by=spec.split.by, text_features=text_features)).write_parquet(
            checked_dir, partition_cols=[STATUS], filesystem=run_fs)
    except Exception as exc:
        raise _as_data_error(exc, f"data.path: reading {spec.path} failed: ") from None
    parts = {name: f"{checked_dir}/{STATUS}={name}" for name in ("train", "val", "test", "quarantine")}
    rows = {name: _parquet_rows(run_fs, _fs_path(path)) for name, path in parts.items()}
    rows_in = sum(rows.values())
    if rows_in == 0:
        raise DataError(f"data.path: {spec.path} holds no rows")

    reasons: Counter = Counter()
    kinds: Counter = Counter()
    rejects_path = None
    if rows["quarantine"]:
        rejects_path = f"{run_dir}/rejects"
        try:  # a plain name for users; object stores cannot move folders: there the files are copied
            run_fs.move(_fs_path(parts["quarantine"]), _fs_path(rejects_path))
        except (OSError, NotImplementedError):
            import pyarrow.fs as pafs

            pafs.copy_files(_fs_path(parts["quarantine"]), _fs_path(rejects_path), source_filesystem=run_fs,
                            destination_filesystem=run_fs)
            run_fs.delete_dir(_fs_path(parts["quarantine"]))
        for batch in _read_split(rejects_path, run_fs, columns=[REASON, KIND]).iter_batches(
                batch_format="pandas", batch_size=65536):
            reasons.update(batch[REASON])
            kinds.update(batch[KIND])
    rows_ok = rows["train"] + rows["val"] + rows["test"]
    rows_rejected, rows_dropped = kinds.get("rejected", 0), kinds.get("dropped", 0)
    if rows_ok + rows_rejected + rows_dropped != rows_in:  # a real invariant of this stage, not an assumption
        raise DataError(f"row accounting broke: {rows_in} in, {rows_ok} ok + {rows_rejected} rejected + "
                        f"{rows_dropped} dropped")
    counts = {"rows_in": rows_in, "rows_ok": rows_ok, "rows_rejected": rows_rejected,
              "rows_dropped": rows_dropped, "reject_reasons": dict(reasons.most_common())}
    top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
    if rows_ok == 0:
        raise DataError(f"no usable rows: all {rows_in} rows of {spec.path} were rejected or dropped. Most "
                        f"common: {top}. Every row with its reason: {rejects_path}")
    if rows_rejected / rows_in > spec.max_reject_fraction:
        raise DataError(f"{rows_rejected} of {rows_in} rows rejected, over data.max_reject_fraction="
                        f"{spec.max_reject_fraction}. Most common: {top}. Rejected rows with reasons: "
                        f"{rejects_path}")
    per_split = {name: rows[name] for name in ("train", "val", "test")}
    counts["splits"] = per_split
    for name in ("train", "test"):
        if per_split[name] == 0:
            raise DataError(f"the {name} split is empty ({rows_ok} usable rows); add data or change data.split")
    drop = [REASON, RAW, KIND]
    splits = {name: _read_split(parts[name], run_fs).drop_columns(drop) if rows[name] else None
              for name in ("train", "val", "test")}

    # One pass per split computes everything left to fit and report: per-block partial statistics merged
    # on the driver (no shuffle): the report over all usable rows; categories and scaling from train only.
    def split_stats(path: str) -> dict:
        return combine_stats(list(_read_split(path, run_fs, columns=features + [LABEL]).map_batches(
            column_stats, batch_format="pandas",
            fn_kwargs={"columns": features + [LABEL], "categories": list(encode_plan) + [LABEL]},
        ).to_pandas()["stats"]))

    per_split_stats = {n: split_stats(parts[n]) for n in ("train", "val", "test") if rows[n]}
    train_stats = per_split_stats["train"]
    classes = _sort_classes(sorted({v for st in per_split_stats.values() for v in st[LABEL]["distinct"]}))
    index = {str(c): i for i, c in enumerate(classes)}
    encoders = {col: {"kind": kind, "categories": train_stats[col].get("distinct", [])}
                for col, kind in encode_plan.items()}
    model_features = encoded_names(features, encoders)

    def finish(df: pd.DataFrame) -> pd.DataFrame:
        df = encode_batch(df, encoders)
        df[Y] = df[LABEL].map(index).astype(np.int64)
        return df.drop(columns=[LABEL])

    for name in splits:  # lazy: each consumer (training's shards, evaluation) streams them
        if splits[name] is None:
            splits[name] = splits["train"].limit(0)
        splits[name] = splits[name].map_batches(finish, batch_format="pandas")

    def scaling(f: str) -> Optional[str]:
        """standard | minmax | None for a model feature: scale ops name columns; `normalize` covers the rest;
        encoded columns (one-hot 0/1, ordinal indices) are left as they are."""
        base = f.split("=", 1)[0] if "=" in f and f.split("=", 1)[0] in encoders else f
        if base in encoders:
            return None
        return scale_plan.get(base, "standard" if spec.normalize == "standard" else None)

    mean, std = [0.0] * len(model_features), [1.0] * len(model_features)
    for j, f in enumerate(model_features):
        how, st = scaling(f), train_stats.get(f, {})
        if how == "standard" and st.get("mean") is not None:
            sd = st["std"]
            # constant columns (std 0, e.g. always-blank pixels) are left unscaled instead of dividing by zero
            mean[j], std[j] = float(st["mean"]), float(sd) if sd and sd > 1e-6 else 1.0
        elif how == "minmax" and st.get("min") is not None:
            lo, hi = float(st["min"]), float(st["max"])
            mean[j], std[j] = lo, (hi - lo) if hi - lo > 1e-12 else 1.0

    column_report = combine_stats([json.dumps({c: _as_partial(st[c]) for c in st}) for st in
                                   per_split_stats.values()])
    column_report[spec.label] = column_report.pop(LABEL)
    for st in column_report.values():
        st.pop("distinct", None)
    fingerprint = fingerprint_files(fs, files, spec.model_dump(mode="json"))
    result = DataResult(train=splits["train"], val=splits["val"], test=splits["test"], features=model_features,
                        classes=classes, mean=mean, std=std, fingerprint=fingerprint, counts=counts,
                        rejects_path=rejects_path, schema=schema, encoders=encoders, columns=column_report,
                        schema_inferred=inferred, raw_features=features)
    write_data_report(run_dir, result)
    return result
