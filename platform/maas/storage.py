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
