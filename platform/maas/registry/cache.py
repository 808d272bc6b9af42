"""The fetch cache: verified local copies of versions held in object storage, one folder per version.

``<cache>/<store id>/<name>/<version>/`` holds exactly the manifest's files and ``.verified`` (the sha256 of
the manifest it was checked against). A per-version lock (``flock``) makes two replicas on one node, or a
replica's alias watcher and a pinned request, download a version once: the second waits, then reuses the
verified copy. A download goes to a private temporary folder that is verified, then renamed into place, and
removed on any failure, so a half-written or tampered copy is never left where the next reader looks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

from maas.exceptions import IntegrityError
from maas.registry.model_version import MANIFEST, ModelVersion
from maas.registry.objects import file_digest

_MARK = ".verified"


def sha256_file(path: str | Path) -> str:
    return file_digest(path)[0]


def verify_files(folder: Path, mv: ModelVersion, allowed_extra: tuple = ()) -> None:
    """Every listed file present with its size and sha256, and no file the manifest does not list (a loader
    must never open an unchecked file: a planted ``tokenizer.json`` or ``shards.json`` would change what runs)."""
    label = mv.ref
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    unlisted = sorted(present - set(mv.files) - set(allowed_extra))
    if unlisted:
        raise IntegrityError(f"{label}: {folder} holds file(s) its manifest does not list ({', '.join(unlisted)}); "
                             "refusing to load it. Remove them, or publish the version again.")
    for art, meta in mv.files.items():
        path = folder / art
        if not path.is_file():
            raise IntegrityError(f"{label}: artifact {art!r} is missing from {folder}; "
                                 "the version is damaged, publish it again")
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            raise IntegrityError(f"{label}: artifact {art!r} fails its sha256 check (tampered or corrupt); "
                                 "refusing to load it. Publish a new version or restore the file.")


def manifest_digest(mv: ModelVersion) -> str:
    return hashlib.sha256(mv.model_dump_json(exclude={"aliases"}).encode()).hexdigest()


class FetchCache:
    def __init__(self, root: str, store_uri: str):
        store_id = hashlib.sha256(store_uri.encode()).hexdigest()[:16]
        self.root = Path(root) / store_id

    @contextlib.contextmanager
    def _locked(self, mv: ModelVersion) -> Iterator[None]:
        folder = self.root / mv.name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{mv.version}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, mv: ModelVersion, download: Callable[[str, Path], None],
            progress: Optional[Callable[[str], None]] = None) -> Path:
        """The verified local copy of ``mv`` (``download(artifact, dest)`` fetches one file; ``progress`` hears
        "fetching" and "verifying" when a copy is made)."""
        final = self.root / mv.name / str(mv.version)
        digest = manifest_digest(mv)
        with self._locked(mv):
            mark = final / _MARK
            if mark.is_file() and mark.read_text() == digest and all(
                    (final / a).is_file() and (final / a).stat().st_size == m["size"] for a, m in mv.files.items()):
                return final  # verified when it was written, for this very manifest
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
            tmp.mkdir(parents=True)
            try:
                if progress is not None:
                    progress("fetching")
                for art in mv.files:
                    download(art, tmp / art)
                if progress is not None:
                    progress("verifying")
                verify_files(tmp, mv)
                (tmp / _MARK).write_text(digest)
                if final.exists():
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return final


__all__ = ["FetchCache", "MANIFEST", "sha256_file", "verify_files"]
