"""A batch's output folder (``answers/``, ``rejects/``, ``_batch.json``): answer and reject files written
whole (never a half-written file to read back), named by the rows they hold (a retried block overwrites its
own file), the manifest, and the ids already written (what a rerun skips)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maas.exceptions import BatchError
from maas.storage import open_uri

MANIFEST, ANSWERS, REJECTS = "_batch.json", "answers", "rejects"
FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl"}


def open_output(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, path = open_uri(uri)
    except ValueError as exc:
        raise BatchError(f"--output: cannot open {uri!r}: {exc}") from None
    return fs, path.rstrip("/")


def part_name(ids, fmt: str) -> str:
    """A file name fixed by the ids it holds: a block Ray runs again writes the same file, not a second one."""
    digest = hashlib.sha1("\x1f".join(map(str, ids)).encode()).hexdigest()[:20]
    return f"part-{digest}{FORMATS[fmt]}"


def write_part(fs: pafs.FileSystem, folder: str, frame: pd.DataFrame, id_column: str, fmt: str) -> None:
    """Write ``frame`` whole: to a temporary name and moved into place (a local folder), or in one put
    (object storage, where an object appears whole or not at all)."""
    if frame.empty:
        return
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    else:  # orjson: numpy arrays and scalars as JSON numbers, and no escaped "/" in "digits/2" (pandas escapes it)
        import orjson

        for record in frame.to_dict("records"):
            buf.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    final = f"{folder}/{part_name(frame[id_column].tolist(), fmt)}"
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        fs.create_dir(folder, recursive=True)
    target = f"{folder}/.tmp-{uuid.uuid4().hex}" if local else final
    with fs.open_output_stream(target) as f:
        f.write(buf.getvalue())
    if local:
        fs.move(target, final)


def parts(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith("part-"))


def read_ids(fs: pafs.FileSystem, path: str, id_column: str) -> list:
    with fs.open_input_file(path) as f:
        if path.endswith(".parquet"):
            return pq.read_table(f, columns=[id_column]).column(id_column).to_pylist()
        return pd.read_json(io.BytesIO(f.read()), lines=True, dtype=False)[id_column].tolist()


def written_ids(fs: pafs.FileSystem, folder: str, id_column: str) -> tuple[list, list]:
    """(ids answered, ids rejected) in the output folder. A stray temporary file (a run killed mid-write) is
    removed; a part that cannot be read is an error naming it (nothing here writes one)."""
    stray = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    for info in stray:
        if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
            fs.delete_file(info.path)
    found = []
    for sub in (f"{folder}/{ANSWERS}", f"{folder}/{REJECTS}"):
        ids = []
        for path in parts(fs, sub):
            try:
                ids += read_ids(fs, path, id_column)
            except Exception as exc:  # pyarrow and pandas raise many types for a damaged file
                raise BatchError(f"--output: {path} cannot be read ({type(exc).__name__}: {exc}); remove it "
                                 "and run again (its rows are then answered again)") from None
        found.append(ids)
    return found[0], found[1]


def read_manifest(fs: pafs.FileSystem, folder: str):
    info = fs.get_file_info(f"{folder}/{MANIFEST}")
    if info.type != pafs.FileType.File:
        return None
    with fs.open_input_stream(info.path) as f:
        return json.loads(f.read())


def write_manifest(fs: pafs.FileSystem, folder: str, manifest: dict) -> None:
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{MANIFEST}") as f:
        f.write(json.dumps(manifest, indent=2, default=str).encode())
