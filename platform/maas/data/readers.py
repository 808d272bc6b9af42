"""Reading a data set with Ray Data: Parquet, CSV, JSON lines, text and image folders, from any pyarrow.fs
location (bootstrapping a bundled set first when the spec asks)."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from maas.data.source import bootstrap_sklearn, filesystem_for, resolve_files
from maas.exceptions import DataError
from maas.spec import DataSpec, ImageOp


def read_dataset(spec: DataSpec):
    """A lazy Ray Dataset over ``spec.path`` (bootstrapping a bundled set first when asked to)."""
    import ray.data

    fs, path = filesystem_for(spec.path)
    if spec.bootstrap and fs.get_file_info(path).type.name == "NotFound":
        bootstrap_sklearn(spec.bootstrap, spec.path)
    fs, files, fmt = resolve_files(spec.path, spec.format)
    try:
        if fmt == "images":
            size = next((op.size for op in spec.ops_of(ImageOp)), None)
            ds = ray.data.read_images(files, filesystem=fs, include_paths=True,
                                      size=tuple(size) if size else None, mode="RGB")
            ds = ds.map_batches(_label_from_folder, batch_format="pandas")
        else:
            extra = {}
            if fmt == "csv":  # an empty field is a missing value, in text columns too (pyarrow's default: "")
                import pyarrow.csv as pacsv

                extra["convert_options"] = pacsv.ConvertOptions(strings_can_be_null=True)
            reader = {"parquet": read_parquet_parallel, "csv": ray.data.read_csv, "json": ray.data.read_json,
                      "text": ray.data.read_text}[fmt]
            ds = reader(files, filesystem=fs, **extra)
    except Exception as exc:
        raise DataError(f"data.path: cannot read {spec.path} as {fmt}: {type(exc).__name__}: {exc}") from None
    return ds, fs, files


def read_parquet(paths, filesystem, **kwargs):
    """``ray.data.read_parquet`` through Ray Data's first Parquet datasource (V1), the one maas reads with.

    Ray 2.60's default (DataSourceV2) starts 32 footer-reader actors for every read, however few the files,
    and ends them after: measured on 2 cores, 2-7 s per read of one 0.5 MB file (0.4-0.6 s with V1), and
    the data stage and training read Parquet six times a run. Per call: the datasource is fixed when the
    read is planned, and the process's DataContext is left as it was."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    was, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, filesystem=filesystem, **kwargs)
    finally:
        ctx.use_datasource_v2 = was


def read_parquet_parallel(files: list, filesystem, tasks: Optional[int] = None):
    """``ray.data.read_parquet``, but a few large files are read as many tasks, each a run of row groups.

    Ray Data 2.60 reads a Parquet file as one task, and the ops fused after the read run in that same task:
    a single 2M-row file went through the whole data stage on one core of a 16-core machine (92 s against
    pandas' 6 s). With fewer files than ``tasks`` (default: the cluster's CPUs), the row groups are dealt
    into ``tasks`` contiguous runs of about equal rows, read by parallel tasks that each yield one block per
    row group, so streaming stays bounded by a row group. Hive-style paths (``key=value`` folders) keep Ray's
    reader, which adds those columns."""
    import pyarrow.parquet as pq
    import ray
    import ray.data

    if tasks is None:
        tasks = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    if len(files) >= tasks or any("=" in part for f in files for part in f.replace("\\", "/").split("/")[:-1]):
        return read_parquet(files, filesystem)
    groups = []  # (file, row group, rows)
    for f in files:
        with filesystem.open_input_file(f) as handle:
            meta = pq.ParquetFile(handle).metadata
        groups += [(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    if len(groups) <= len(files):  # one row group a file: nothing to split
        return read_parquet(files, filesystem)
    total = sum(g[2] for g in groups) or 1
    runs, current, rows = [], [], 0
    for f, i, n in groups:  # contiguous runs of about total/tasks rows, never across files
        if current and (current[-1][0] != f or rows >= total / tasks):
            runs.append(current)
            current, rows = [], 0
        current.append((f, i))
        rows += n
    runs.append(current)
    items = [{"file": run[0][0], "row_groups": [i for _, i in run]} for run in runs]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_row_groups, batch_size=1, batch_format="pandas", fn_kwargs={"filesystem": filesystem})


def _read_row_groups(item: pd.DataFrame, filesystem):
    """One run of ``read_parquet_parallel``: a block per row group (pyarrow Tables)."""
    import pyarrow.parquet as pq

    for f, row_groups in zip(item["file"], item["row_groups"]):
        with filesystem.open_input_file(f) as handle:
            pf = pq.ParquetFile(handle)
            for i in row_groups:
                yield pf.read_row_group(int(i))


def _label_from_folder(df: pd.DataFrame) -> pd.DataFrame:
    """Images in <root>/<class>/<file>: the class is the parent folder's name."""
    df = df.copy()
    df["label"] = [p.replace("\\", "/").rsplit("/", 2)[-2] for p in df["path"]]
    return df.drop(columns=["path"])
