"""One way to open a store or data location: plain paths are local (made absolute), anything else a URI."""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it.

    Raises:
        ValueError: pyarrow cannot open the URI (callers re-raise it naming their field).
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for bad URIs
        raise ValueError(str(exc)) from None


def put_bytes(folder: str, name: str, data: bytes) -> str:
    """Write ``data`` as ``folder/name`` on the folder's filesystem (a local path or a URI); returns its
    location, in the folder's own spelling."""
    fs, path = open_uri(folder)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(data)
    return f"{folder.rstrip('/')}/{name}"


def put_folder_files(folder: str, written: dict) -> dict:
    """Copy files written locally (``{kind: local path}``) into ``folder`` (local or URI), keeping their
    names; returns ``{kind: location}``."""
    from pathlib import Path

    return {kind: put_bytes(folder, Path(path).name, Path(path).read_bytes()) for kind, path in written.items()}
