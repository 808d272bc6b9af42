"""What the registry needs from a store, on a local disk and on object storage alike.

Whole objects under a root, addressed by relative keys (``models/digits/versions/3/manifest.json``): streamed
uploads and downloads, listings, deletes, and the one primitive publication and alias moves are built on,
**create-only writes**: a write that succeeds only if nothing exists at the key yet, atomically, so two
writers can never both succeed. On a local (or mounted) disk that is a fully written, fsynced temporary file
hard-linked into place (``link`` fails if the name exists); on S3 a ``PutObject`` with ``If-None-Match: *``
(S3 conditional writes), sent through boto3 because pyarrow has no conditional writes. Bulk bytes go through
pyarrow's filesystems either way.

Every key is checked before use: no absolute keys, no ``..``, nothing that resolves outside the root.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlparse

import pyarrow.fs as pafs

from maas.exceptions import RegistryError
from maas.storage import open_uri

CHUNK = 1 << 20
_LOCAL = pafs.LocalFileSystem()
_KEY_PART = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.=-]*")


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain parts (letters, digits, ``_.=-``; no ``..``, no empty part)."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not all(_KEY_PART.fullmatch(p) and p not in (".", "..") for p in parts):
        raise RegistryError(f"refusing the store path {key!r}: it is not a plain relative path")
    return key


class ObjectInfo:
    __slots__ = ("key", "size", "mtime")

    def __init__(self, key: str, size: int, mtime: float):
        self.key, self.size, self.mtime = key, size, mtime


class Store:
    """A pyarrow filesystem under ``root`` (the generic case: reads, writes, listings; no create-only)."""

    local = False

    def __init__(self, uri: str):
        try:
            self.fs, self.root = open_uri(uri)
        except ValueError as exc:
            raise RegistryError(f"cannot open store {uri!r}: {exc}") from None
        self.root = self.root.rstrip("/")
        self.uri = uri

    def path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    # ------------------------------------------------------------------ reads
    def read_bytes(self, key: str) -> Optional[bytes]:
        """The object's bytes, or None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(key)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursive), keys relative to the root."""
        base = self.path(prefix)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return [ObjectInfo(i.path[cut:], i.size or 0, i.mtime.timestamp() if i.mtime else 0.0)
                for i in infos if i.type == pafs.FileType.File]

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the direct sub-folders (common prefixes) of ``prefix``."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def download(self, key: str, dest: Path) -> None:
        with self.fs.open_input_stream(self.path(key)) as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)

    # ------------------------------------------------------------------ writes
    def upload(self, src: Path, key: str) -> tuple[str, int]:
        """Copy a local file to ``key``; returns (sha256, size) of the file, hashed while pyarrow copies it
        (its multipart upload runs in threads of its own; hashing releases the GIL), so the checksum costs
        no extra time. A file changed during the copy is caught where it matters: fetch re-hashes."""
        return hashed_while(src, lambda: pafs.copy_files(str(src), self.path(key), source_filesystem=_LOCAL,
                                                         destination_filesystem=self.fs))

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` whole, replacing what is there (an object store's put is whole)."""
        with self.fs.open_output_stream(self.path(key)) as f:
            f.write(data)

    def create(self, key: str, data: bytes) -> bool:
        raise RegistryError(f"{self.uri}: this store has no create-only writes, so versions and alias moves "
                            "cannot be committed atomically; use a local or mounted path, or s3://")

    def delete_prefix(self, prefix: str) -> None:
        try:
            self.fs.delete_dir(self.path(prefix))
        except FileNotFoundError:
            pass

    def delete_key(self, key: str) -> None:
        """Remove one object (nothing when there is none)."""
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass


class LocalStore(Store):
    """A local or mounted disk: create-only by ``link``, every commit fsynced (file, then folder)."""

    local = True

    def path(self, key: str) -> str:
        p = os.path.join(self.root, check_key(key))
        if os.path.commonpath([os.path.realpath(p), os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise RegistryError(f"refusing the store path {key!r}: it resolves outside {self.root}")
        return p

    def upload(self, src: Path, key: str) -> tuple[str, int]:
        """A kernel-side copy (``copy_file_range``/``sendfile``) while a thread hashes the source, then an
        fsync: the file is durable before any manifest names it."""
        dest = self.path(key)
        os.makedirs(os.path.dirname(dest), exist_ok=True)

        def copy() -> None:
            shutil.copyfile(src, dest)
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        sha, size = hashed_while(src, copy)
        fsync_dir(os.path.dirname(dest))
        if os.path.getsize(dest) != size:
            raise RegistryError(f"{src} changed while it was being published; publish it again")
        return sha, size

    def _staged(self, key: str, data: bytes, sync: bool) -> tuple[str, str]:
        """(the path of ``key``, a temporary file beside it that holds ``data``, fsynced if ``sync``)."""
        dest = self.path(key)
        folder = os.path.dirname(dest)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stage-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return dest, tmp

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` whole or not at all: a temporary file in its folder, then a rename over the old one."""
        dest, tmp = self._staged(key, data, sync=False)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise

    def create(self, key: str, data: bytes) -> bool:
        dest, tmp = self._staged(key, data, sync=True)
        try:
            try:
                os.link(tmp, dest)  # atomic, and refuses an existing name
            except FileExistsError:
                return False
            fsync_dir(os.path.dirname(dest))
            return True
        finally:
            os.unlink(tmp)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)


def file_digest(path: str | Path) -> tuple[str, int]:
    """(sha256, size) of the bytes read from ``path``."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def hashed_while(src: Path, work) -> tuple[str, int]:
    """(sha256, size) of ``src``, computed in a thread while ``work()`` runs."""
    import threading

    out: dict = {}

    def digest() -> None:
        try:
            out["result"] = file_digest(src)
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=digest, name="maas-sha256", daemon=True)
    thread.start()
    try:
        work()
    finally:
        thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def fsync_dir(folder: str) -> None:
    """Make a rename or link inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3Store(Store):
    """S3 and S3-compatible stores: pyarrow for bytes, boto3 for conditional (create-only) writes."""

    def __init__(self, uri: str):
        super().__init__(uri)
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint = (query.get("endpoint_override") or [None])[0] or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if self.endpoint and "://" not in self.endpoint:
            scheme = (query.get("scheme") or ["https"])[0]
            self.endpoint = f"{scheme}://{self.endpoint}"
        self.region = (query.get("region") or [None])[0]
        self._client = None

    def client(self):
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise RegistryError("publishing to s3:// needs boto3 (pip install boto3): pyarrow has no "
                                    "conditional writes") from None
            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region)
        return self._client

    def create(self, key: str, data: bytes) -> bool:
        self._check_conditional_writes()
        return self._put_if_absent(f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key), data, key)

    def _check_conditional_writes(self) -> None:
        """Once per bucket and process: does this store honour ``If-None-Match: *``? An S3-compatible store
        that ignores it turns every create-only commit into last-writer-wins (two publishers, one version
        number, one silently lost), so maas refuses to write there."""
        where = (self.endpoint, self.bucket)
        if where not in _CONDITIONAL:
            probe = f"{self.prefix}/.maas-probe/{unique_id()}" if self.prefix else f".maas-probe/{unique_id()}"
            first = self._put_if_absent(probe, b"1", ".maas-probe")
            second = self._put_if_absent(probe, b"2", ".maas-probe")
            try:
                self.client().delete_object(Bucket=self.bucket, Key=probe)
            except Exception:  # left behind: a 1-byte object under .maas-probe/
                pass
            _CONDITIONAL[where] = first and not second
        if not _CONDITIONAL[where]:
            raise RegistryError(f"{self.uri}: this store ignores conditional writes (If-None-Match: *), so two "
                                "publishers could take one version number and one would be lost silently; "
                                "use AWS S3 or an S3-compatible store that supports conditional writes")

    def _put_if_absent(self, full: str, data: bytes, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client().put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise RegistryError(f"{self.uri}: cannot write {key}: {code or status}: {exc}") from None


_CONDITIONAL: dict = {}  # (endpoint, bucket) -> whether it honours If-None-Match


def open_store(uri: str) -> Store:
    """The store behind a registry URI: a local path (or file://), s3://, or another pyarrow filesystem."""
    if "://" not in uri or uri.startswith("file://"):
        return LocalStore(uri)
    if uri.startswith("s3://"):
        return S3Store(uri)
    return Store(uri)


def unique_id() -> str:
    return uuid.uuid4().hex
