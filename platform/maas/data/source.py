"""Finding and reading input files on any pyarrow.fs location, and bootstrapping bundled data sets."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

import pyarrow.fs as pafs

from maas.exceptions import DataError
from maas.storage import open_uri

_EXT = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
        ".ndjson": "json"}


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return open_uri(uri)
    except ValueError as exc:
        raise DataError(f"data.path: cannot open {uri!r}: {exc}") from None


def _missing(uri: str) -> DataError:
    return DataError(f"data.path: {uri} does not exist (check the path, or set data.bootstrap to write a "
                     "bundled data set there)")


def check_local_path(data) -> None:
    """Fail fast, before any Ray starts (an embedded one takes 6-13 s here), where a spec's ``data`` names a
    local file or folder (no URI scheme, no glob) that does not exist and that nothing will write (no
    ``bootstrap``); the data stage would raise the same error once running.

    Raises:
        DataError: the path does not exist.
    """
    path = getattr(data, "path", None)
    remote = path and "://" in path and not path.startswith("file://")
    if not path or remote or getattr(data, "bootstrap", None) or any(ch in path for ch in "*?["):
        return
    fs, local = filesystem_for(path)  # resolved as the data stage resolves it (``~``, relative paths)
    if fs.get_file_info(local).type == pafs.FileType.NotFound:
        raise _missing(path)


def resolve_files(uri: str, fmt: str) -> tuple[pafs.FileSystem, list[str], str]:
    """Expand a file, directory or glob into a sorted list of data files and settle the format.

    Raises:
        DataError: nothing matches, or the format cannot be told from the extension.
    """
    fs, path = filesystem_for(uri)
    if any(ch in path for ch in "*?["):
        base = path[: min(path.find(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise _missing(uri)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File
                           and not i.base_name.startswith((".", "_")))
        else:
            files = [path]
    if fmt not in ("auto", "text") and len(files) > 1:  # a folder may hold other files beside the data
        exts = _IMAGE_EXTS if fmt == "images" else {e for e, k in _EXT.items() if k == fmt}
        files = [f for f in files if Path(f).suffix.lower() in exts]
    if not files:
        raise DataError(f"data.path: no data files match {uri}")
    if fmt == "auto":
        kinds = {_EXT.get(Path(f).suffix.lower()) for f in files}
        if None in kinds or len(kinds) != 1:
            raise DataError(f"data.format: cannot tell the format of {files[0]} from its extension; "
                            "set data.format to parquet, csv, json, text or images")
        fmt = kinds.pop()
    return fs, files, fmt


def fingerprint_files(fs: pafs.FileSystem, files: list[str], extra: dict) -> str:
    """sha256 over every file's bytes (in sorted order) and the preparation settings in ``extra``."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for f in files:
        h.update(f.rsplit("/", 1)[-1].encode())
        with fs.open_input_stream(f) as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def bootstrap_sklearn(name: str, uri: str) -> None:
    """Write the bundled data set ``name`` to ``uri`` as Parquet: scikit-learn's ('sklearn:digits', ...) or
    'docs:packages' (docstring sentences labelled by the package they document: real English text
    classification, from installed packages)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name == "docs:packages":
        import pandas as pd

        from maas.data.corpus import package_topics

        rows = package_topics()
        frame = pd.DataFrame({"text": [t for t, _ in rows], "package": [p for _, p in rows]})
    else:
        from sklearn import datasets

        loader = getattr(datasets, f"load_{name.split(':', 1)[1]}")
        frame = loader(as_frame=True).frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    fs, path = filesystem_for(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as out:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    fs.move(tmp, path)


_CREDENTIALS = {"s3": ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
                "gs": ("GOOGLE_APPLICATION_CREDENTIALS",)}


def _credentials_here(scheme: str) -> bool:
    import os

    if scheme == "s3" and (Path.home() / ".aws" / "credentials").is_file():
        return True
    return any(os.environ.get(name) for name in _CREDENTIALS.get(scheme, ()))


def check_inputs(spec) -> tuple[list[tuple[str, str]], list[str]]:
    """Whether what ``spec`` reads is there, as far as this machine can tell without Ray: local files, folders
    and globs; object storage when credentials for it are present here (else a note); the store's folder.
    Returns (problems as (field, message), notes).

    Example:
        >>> check_inputs(load_spec("examples/digits.yaml"))
        ([], ['data.path: data/digits.parquet is not there yet: data.bootstrap writes it on the first run'])
    """
    problems, notes = [], []
    for field, uri, fmt, written in spec.inputs():
        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        if scheme != "file" and not _credentials_here(scheme):
            notes.append(f"{field}: {uri} not checked here (no {scheme} credentials on this machine); the run "
                         "checks it where it runs")
            continue
        try:
            if fmt == "model":
                _check_model_folder(uri)
            else:
                resolve_files(uri, "auto" if fmt == "json" else fmt)
        except DataError as exc:
            message = str(exc).removeprefix("data.path: ").removeprefix("data.format: ")
            if written and "does not exist" in message:
                notes.append(f"{field}: {uri} is not there yet: data.bootstrap writes it on the first run")
            else:
                problems.append((field, message))
    store_problem = _store_problem(spec.store)
    if store_problem:
        problems.append(("store", store_problem))
    return problems, notes


def _check_model_folder(uri: str) -> None:
    fs, path = filesystem_for(uri)
    if fs.get_file_info(f"{path.rstrip('/')}/config.json").type != pafs.FileType.File:
        kind = fs.get_file_info(path).type
        raise DataError(f"{uri} does not exist" if kind == pafs.FileType.NotFound else
                        f"{uri} holds no config.json: give the folder of a Hugging Face causal LM")


def _store_problem(store: str) -> str:
    """Why a local store cannot be used (its nearest existing folder is not writable), or ""."""
    import os

    if "://" in store and not store.startswith("file://"):
        return ""
    here = os.path.abspath(store.removeprefix("file://"))
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        return f"{store}: {here} is a file, not a folder"
    return "" if os.access(here, os.W_OK) else f"{store}: {here} is not writable"
