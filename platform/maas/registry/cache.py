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
    """Verified local copies of a remote store's versions, under ``<root>/<store id>/``. A new cache folder is
    private (0700): a copy is verified once, when it is written, and nobody else may write beside it. A cache
    folder someone else can write to (another owner, group- or world-writable: a shared cache) is verified
    again, every file's sha256, each time a version is taken from it."""

    def __init__(self, root: str, store_uri: str):
        store_id = hashlib.sha256(store_uri.encode()).hexdigest()[:16]
        self.root = Path(root) / store_id
        self._private: Optional[bool] = None

    def private(self) -> bool:
        """Whether only this user can write to the cache folder and the ones above it inside ``root``."""
        if self._private is None:
            # a new cache is private; an existing one keeps the permissions its owner gave it (a cache shared
            # on purpose stays shared, and verified again at every fetch)
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            folders = [self.root, self.root.parent]
            self._private = all(_only_mine(f) for f in folders)
        return self._private

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
        private = self.private()  # (made private on first use)
        digest = manifest_digest(mv)
        with self._locked(mv):
            mark = final / _MARK
            if mark.is_file() and mark.read_text() == digest and all(
                    (final / a).is_file() and (final / a).stat().st_size == m["size"] for a, m in mv.files.items()):
                if private:
                    return final  # verified when it was written, for this very manifest, and nobody else writes
                try:  # a shared cache: what another user may have swapped is checked again, whole
                    verify_files(final, mv, allowed_extra=(_MARK,))
                    return final
                except IntegrityError:
                    pass  # fetched again below
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


def _only_mine(folder: Path) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


__all__ = ["FetchCache", "MANIFEST", "sha256_file", "verify_files"]
