"""The run folder: what a data stage leaves under ``<store>/runs/<run_id>/`` for the stages after it.

``data_report.json`` (counts, features, classes, normalisation, encoders, column statistics), ``schema.json``,
the finished splits as Parquet (``splits/{train,val,test}``) and the rejects. Later stages and jobs find a
run by its id (``run_dir_for``) and reload its splits lazily (``load_prepared``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from maas.data.readers import read_parquet
from maas.data.source import filesystem_for
from maas.exceptions import DataError

Y = "__y"  # the label as a class index, in every finished split


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
    schema: dict = field(default_factory=dict)  # column -> {type, nullable, min, max, allowed}
    encoders: dict = field(default_factory=dict)  # column -> {kind: onehot|ordinal, categories} (train only)
    columns: dict = field(default_factory=dict)  # column -> count, nulls, min/max/mean/std or top values
    schema_inferred: bool = False
    raw_features: list = field(default_factory=list)  # feature columns before encoding (what clients send)
    saved: dict = field(default_factory=dict)  # split -> (pyarrow filesystem, folder) of its saved Parquet

    def numpy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Materialise a (small) split on the driver as (X float32 [N, F], y int64 [N])."""
        df = self._to_pandas(split, self.features + [Y])
        return df[self.features].to_numpy(np.float32), df[Y].to_numpy(np.int64)

    def texts(self, split: str) -> tuple[list, np.ndarray]:
        """A text model's split on the driver: (its one text feature as strings, y int64 [N])."""
        df = self._to_pandas(split, [self.features[0], Y])
        return df[self.features[0]].astype(str).tolist(), df[Y].to_numpy(np.int64)

    def _to_pandas(self, split: str, columns: list):
        """A saved split is read here with pyarrow: a Ray Data read after training starts a worker that
        imports Ray Data first (3 s a read on 2 cores, where pyarrow takes milliseconds); a split not saved
        yet is materialised through Ray Data."""
        if split in self.saved:
            import pyarrow.parquet as pq

            fs, folder = self.saved[split]
            return pq.read_table(folder, filesystem=fs, columns=columns).to_pandas()
        return getattr(self, split).select_columns(columns).to_pandas()


def write_data_report(run_dir: str, result: DataResult) -> None:
    fs, path = filesystem_for(run_dir)
    fs.create_dir(path, recursive=True)
    report = {"fingerprint": result.fingerprint, "counts": result.counts, "features": result.features,
              "classes": result.classes, "rejects_path": result.rejects_path,
              "normalization": {"mean": result.mean, "std": result.std}, "encoders": result.encoders,
              "columns": result.columns, "schema_inferred": result.schema_inferred,
              "raw_features": result.raw_features}
    with fs.open_output_stream(f"{path}/data_report.json") as f:
        f.write(json.dumps(report, indent=2, default=str).encode())
    with fs.open_output_stream(f"{path}/schema.json") as f:
        f.write(json.dumps({"columns": result.schema}, indent=2, default=str).encode())


def run_dir_for(store: str, run_id: str) -> str:
    return f"{store.rstrip('/')}/runs/{run_id}" if "://" in store else os.path.join(
        os.path.abspath(store), "runs", run_id)


def read_report(store: str, run_id: Optional[str] = None) -> tuple[str, dict]:
    """(run id, data_report.json) of ``run_id`` or of the newest run in ``store`` that has one.

    Raises:
        DataError: no such run, or no run with a data report yet.
    """
    import pyarrow.fs as pafs

    root = run_dir_for(store, "x").rsplit("/", 1)[0] if "://" in store else os.path.join(os.path.abspath(store),
                                                                                          "runs")
    fs, path = filesystem_for(root)
    if run_id is None:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        found = [(i.mtime, i.base_name) for i in infos if i.type == pafs.FileType.Directory and
                 fs.get_file_info(f"{i.path}/data_report.json").type == pafs.FileType.File]
        if not found:
            raise DataError(f"no data reports under {root}: run the data stage first (maas run SPEC)")
        run_id = max(found)[1]
    try:
        with fs.open_input_stream(f"{path}/{run_id}/data_report.json") as f:
            return run_id, json.loads(f.read())
    except (FileNotFoundError, OSError):
        raise DataError(f"run {run_id!r} has no data report under {root}") from None


def save_prepared(result: DataResult, run_dir: str) -> None:
    """Persist the final splits (encoded, labels as indices) as Parquet beside data_report.json, so later
    stages and jobs reload them, and point ``result`` at them: one streaming pass, and later readers (the
    training shards, evaluation) read the finished columns instead of redoing the encoding. The checked
    rows the data stage wrote before are then removed (the rejects are kept)."""
    fs, root = filesystem_for(run_dir)
    for name in ("train", "val", "test"):
        getattr(result, name).write_parquet(f"{run_dir}/splits/{name}")
        split_dir = f"{root}/splits/{name}"
        if fs.get_file_info(split_dir).type.name == "NotFound":  # an empty split writes no files
            fs.create_dir(split_dir, recursive=True)
            setattr(result, name, getattr(result, name).limit(0).materialize())
        else:
            setattr(result, name, read_parquet(split_dir, fs))
            result.saved[name] = (fs, split_dir)
    checked = f"{root}/checked"
    if result.rejects_path is None or "/checked/" not in result.rejects_path:
        if fs.get_file_info(checked).type.name != "NotFound":
            fs.delete_dir(checked)


def load_prepared(run_dir: str) -> DataResult:
    """The DataResult of an earlier data stage, from its run folder (local path or URI).

    Raises:
        DataError: the run folder holds no prepared data (name the run id of a finished data stage).
    """
    import pyarrow.fs as pafs

    fs, path = filesystem_for(run_dir)
    try:
        with fs.open_input_stream(f"{path}/data_report.json") as f:
            report = json.loads(f.read())
    except (FileNotFoundError, OSError):
        raise DataError(f"no prepared data in {run_dir}: run the data stage first "
                        "(python -m jobs.preprocess --spec FILE) and pass its run id") from None
    splits, saved = {}, {}
    for name in ("train", "val", "test"):
        split_dir = f"{path}/splits/{name}"
        if fs.get_file_info(split_dir).type.name == "NotFound":
            raise DataError(f"{run_dir} has no saved '{name}' split; re-run the data stage")
        if not fs.get_file_info(pafs.FileSelector(split_dir)):  # an empty split
            splits[name] = None
            continue
        splits[name] = read_parquet(split_dir, fs)  # lazy: streamed by its consumers
        saved[name] = (fs, split_dir)
    if splits["train"] is None:
        raise DataError(f"{run_dir} has an empty train split; re-run the data stage")
    for name in ("val", "test"):
        if splits[name] is None:
            splits[name] = splits["train"].limit(0)
    norm = report["normalization"]
    return DataResult(train=splits["train"], val=splits["val"], test=splits["test"], features=report["features"],
                      classes=report["classes"], mean=norm["mean"], std=norm["std"],
                      fingerprint=report["fingerprint"], counts=report["counts"],
                      rejects_path=report.get("rejects_path"), encoders=report.get("encoders", {}),
                      columns=report.get("columns", {}), schema_inferred=report.get("schema_inferred", False),
                      raw_features=report.get("raw_features", report["features"]), saved=saved)
