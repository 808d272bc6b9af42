"""The model registry: immutable numbered versions, aliases, lineage and checksums on any pyarrow.fs URI.

Layout under the store root::

    models/<name>/versions/<n>/manifest.json   # written last inside staging: a version with it is complete
    models/<name>/versions/<n>/<artifact files>
    models/<name>/aliases/<alias>.json          # {"version": n}, replaced atomically
    models/<name>/.staging/<uuid>/              # publications in flight; never listed

Publication is write -> checksum -> make visible: files are copied into a private staging folder, their
sha256 recorded in the manifest, and the folder is moved to ``versions/<n>`` in one rename. A crash
before the rename leaves only staging debris (``Registry.gc`` clears it), never a half version. On object
stores, where a "rename" is a copy, a version only counts once its manifest exists, and the manifest is the
last object written, so readers still never see a partial version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow.fs as pafs

from maas.exceptions import IntegrityError, RegistryError
from maas.registry.model_version import ModelVersion, parse_ref
from maas.storage import open_uri

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return open_uri(uri)
    except ValueError as exc:
        raise RegistryError(f"cannot open store {uri!r}: {exc}") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class Registry:
    """Versions, aliases and verified downloads of models under one store URI.

    Args:
        uri: local path (``.maas``) or URI (``file:///srv/maas``, ``s3://bucket/maas``).
        cache_dir: where remote artifacts are downloaded before verification (local stores are read in place).

    Example:
        >>> reg = Registry(".maas")
        >>> v = reg.publish("digits", {"model.onnx": "/tmp/m.onnx"}, runtime="onnxruntime")
        >>> reg.set_alias("digits", "production", v.version)
        >>> local_dir, version = reg.fetch("digits@production")
    """

    def __init__(self, uri: str, cache_dir: Optional[str] = None):
        self.uri = uri
        self.fs, self.root = _resolve(uri)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        # what to hand to other processes (Serve replicas, job drivers) whose working folder may differ
        self.location = self.root if self._local else uri
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "maas", "artifacts")

    # ------------------------------------------------------------------------------------------ paths
    def _model_dir(self, name: str) -> str:
        return f"{self.root}/models/{name}"

    def _version_dir(self, name: str, version: int) -> str:
        return f"{self._model_dir(name)}/versions/{version}"

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_json(self, path: str) -> Any:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def _write_json_atomic(self, path: str, obj: Any) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True).encode())
        self.fs.move(tmp, path)

    # ------------------------------------------------------------------------------------------ reads
    def list_models(self) -> list[str]:
        root = f"{self.root}/models"
        if not self._exists(root):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(root))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def _version_numbers(self, name: str, complete: bool = True) -> list[int]:
        """Published version numbers; with ``complete=False`` also numbers taken by a copy in progress."""
        vdir = f"{self._model_dir(name)}/versions"
        if not self._exists(vdir):
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(vdir)):
            if info.type == pafs.FileType.Directory and info.base_name.isdigit():
                if not complete or self._exists(f"{info.path}/{MANIFEST}"):  # no manifest = not a version
                    out.append(int(info.base_name))
        return sorted(out)

    def list_versions(self, name: str) -> list[ModelVersion]:
        return [self.get_version(name, v) for v in self._version_numbers(name)]

    def get_version(self, name: str, version: int) -> ModelVersion:
        path = f"{self._version_dir(name, version)}/{MANIFEST}"
        if not self._exists(path):
            known = self._version_numbers(name)
            if not known:
                raise RegistryError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
            raise RegistryError(f"model {name!r} has no version {version}; versions: {known}")
        mv = ModelVersion.model_validate(self._read_json(path))
        mv.aliases = [a for a, v in self.aliases(name).items() if v == version]
        return mv

    def aliases(self, name: str) -> dict[str, int]:
        adir = f"{self._model_dir(name)}/aliases"
        if not self._exists(adir):
            return {}
        out = {}
        for info in self.fs.get_file_info(pafs.FileSelector(adir)):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json"):
                out[info.base_name[:-5]] = int(self._read_json(info.path)["version"])
        return dict(sorted(out.items()))

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias``, ``name/version`` or ``name`` (the latest version) -> ModelVersion."""
        name, version, alias = parse_ref(ref)
        if alias is not None:
            aliases = self.aliases(name)
            if alias not in aliases:
                if not self._version_numbers(name):
                    raise RegistryError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
                raise RegistryError(f"model {name!r} has no alias {alias!r}; aliases: {sorted(aliases) or 'none'}")
            version = aliases[alias]
        if version is None:
            known = self._version_numbers(name)
            if not known:
                raise RegistryError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
            version = known[-1]
        return self.get_version(name, version)

    # ------------------------------------------------------------------------------------------ writes
    def publish(
        self,
        name: str,
        files: dict[str, str | Path],
        *,
        runtime: str,
        metrics: Optional[dict] = None,
        lineage: Optional[dict] = None,
        signature: Optional[dict] = None,
        status: str = "ready",
        description: str = "",
        _fail_after_files: int | None = None,
    ) -> ModelVersion:
        """Publish local ``files`` ({artifact name: local path}) as the next version of ``name``.

        The version becomes visible only once every file is written and checksummed.

        Raises:
            RegistryError: bad name, missing file, or the store cannot be written.
        """
        ModelVersion.check_name(name)
        if not files:
            raise RegistryError("publish needs at least one artifact file")
        for art, src in files.items():
            if "/" in art or art in (MANIFEST, "") or art.startswith("."):
                raise RegistryError(f"invalid artifact name {art!r}: use a plain file name")
            if not Path(src).is_file():
                raise RegistryError(f"artifact {art!r}: file not found: {src}")

        staging = f"{self._model_dir(name)}/.staging/{uuid.uuid4().hex}"
        self.fs.create_dir(staging, recursive=True)
        entries = {}
        for i, (art, src) in enumerate(sorted(files.items())):
            if _fail_after_files is not None and i >= _fail_after_files:
                raise RegistryError("injected failure during publish (test hook)")
            digest = hashlib.sha256()
            size = 0
            with open(src, "rb") as fin, self.fs.open_output_stream(f"{staging}/{art}") as fout:
                for chunk in iter(lambda: fin.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
            entries[art] = {"sha256": digest.hexdigest(), "size": size}

        for _ in range(100):
            version = (self._version_numbers(name, complete=False) or [0])[-1] + 1
            mv = ModelVersion(
                name=name, version=version, created_at=time.time(), runtime=runtime, files=entries,
                metrics=metrics or {}, lineage=lineage or {}, signature=signature or {}, status=status,
                description=description,
            )
            with self.fs.open_output_stream(f"{staging}/{MANIFEST}") as f:
                f.write(mv.model_dump_json(indent=2, exclude={"aliases"}).encode())
            target = self._version_dir(name, version)
            if self._exists(target):
                continue  # someone else took this number: try the next one
            self.fs.create_dir(f"{self._model_dir(name)}/versions", recursive=True)
            try:
                self.fs.move(staging, target)  # one rename on local/POSIX stores
            except OSError:
                if self._exists(f"{target}/{MANIFEST}"):
                    continue  # lost a race for this number
                raise
            return mv
        raise RegistryError(f"could not allocate a version number for {name!r} after 100 attempts")

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (atomically replacing its previous target).

        Raises:
            RegistryError: the version does not exist or was rejected by the quality gate.
        """
        ModelVersion.check_name(alias, what="alias")
        mv = self.get_version(name, version)
        if mv.status != "ready":
            raise RegistryError(f"{name}/{version} is {mv.status!r} and cannot take alias {alias!r}"
                                f" (reason: {mv.description or 'see its metrics'})")
        self._write_json_atomic(f"{self._model_dir(name)}/aliases/{alias}.json", {"version": version})

    def delete_alias(self, name: str, alias: str) -> None:
        path = f"{self._model_dir(name)}/aliases/{alias}.json"
        if not self._exists(path):
            raise RegistryError(f"model {name!r} has no alias {alias!r}")
        self.fs.delete_file(path)

    def gc(self) -> int:
        """Remove staging folders left by crashed publications; returns how many were removed."""
        removed = 0
        for name in self.list_models():
            sdir = f"{self._model_dir(name)}/.staging"
            if self._exists(sdir):
                for info in self.fs.get_file_info(pafs.FileSelector(sdir)):
                    self.fs.delete_dir(info.path)
                    removed += 1
        return removed

    # ------------------------------------------------------------------------------------------ fetch
    def fetch(self, ref: str) -> tuple[Path, ModelVersion]:
        """Return a local folder holding ``ref``'s artifacts, every file checked against its sha256.

        Raises:
            IntegrityError: a file is missing, has the wrong size, or its bytes changed since publication.
        """
        mv = self.resolve(ref)
        src = self._version_dir(mv.name, mv.version)
        if self._local:
            local = Path(src)
        else:
            local = Path(self.cache_dir) / mv.name / str(mv.version)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            tmp.mkdir(parents=True, exist_ok=True)
            for art in mv.files:
                with self.fs.open_input_stream(f"{src}/{art}") as fin, open(tmp / art, "wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
            if local.exists():
                shutil.rmtree(local)
            tmp.rename(local)
        verify_files(local, mv.files.items(), f"{mv.name}/{mv.version}")
        return local, mv


def verify_files(folder: Path, entries: Iterable[tuple[str, dict]], label: str) -> None:
    for art, meta in entries:
        path = folder / art
        if not path.is_file():
            raise IntegrityError(f"{label}: artifact {art!r} is missing from {folder}; "
                                 "the version is damaged, publish it again")
        if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            raise IntegrityError(f"{label}: artifact {art!r} fails its sha256 check (tampered or corrupt); "
                                 "refusing to load it. Publish a new version or restore the file.")
