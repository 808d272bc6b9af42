"""The model registry: immutable numbered versions, aliases with history, lineage and checksums, on a local
disk or object storage (the only shared store a cluster has).

Layout under the store root::

    models/<name>/objects/<id>/<artifact>        # one publication's uploads, under a unique id
    models/<name>/versions/<n>/manifest.json     # the commit: written create-only, names its objects/<id>
    models/<name>/aliases/<alias>/<seq>.json     # alias moves, create-only (maas.registry.aliases)

Publication uploads every artifact under a fresh ``objects/<id>/`` (checksummed on the way), then commits the
version by creating its manifest create-only (``maas.registry.objects``: a hard link on a disk, S3's
``If-None-Match: *``): if another publisher took the number first, the next number is tried. Concurrent
publishers never share a number nor mix files, and a publisher killed at any point leaves no visible
version, only uploads that no manifest names, which ``gc`` removes once older than a grace period (never a
publication still in progress). A publish that fails removes its own uploads.

Reads trust nothing in the store: a manifest must parse, name the version asked for, list plain file names
with checksums; every path is built from validated names; a fetched folder must hold exactly the listed
files, each matching its sha256.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from maas.exceptions import IntegrityError, NotFoundError, RegistryError
from maas.models.tasks import TASKS, task_from_signature
from maas.registry import aliases as alias_log
from maas.registry import deletion
from maas.registry.cache import FetchCache, sha256_file, verify_files
from maas.registry.leases import LEASE_VALID_S, Lease, Stopped
from maas.registry.model_version import ARTIFACT, MANIFEST, ModelVersion, parse_ref
from maas.registry.objects import open_store, unique_id

UNCHECKED = alias_log.UNCHECKED
GC_GRACE_S = 3600.0


def _who() -> str:
    """Who moves an alias when the caller does not say: the user and host of this process."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"{user}@{socket.gethostname()}"


class Registry:
    """Versions, aliases and verified downloads of models under one store URI.

    Args:
        uri: local path (``.maas``) or URI (``file:///srv/maas``, ``s3://bucket/maas``).
        cache_dir: where artifacts of remote stores are kept once verified (local stores are read in place).

    Example:
        >>> reg = Registry(".maas")
        >>> v = reg.publish("digits", {"model.onnx": "/tmp/m.onnx"}, runtime="onnxruntime")
        >>> reg.set_alias("digits", "production", v.version)
        >>> local_dir, version = reg.fetch("digits@production")
    """

    def __init__(self, uri: str, cache_dir: Optional[str] = None):
        self.uri = uri
        self.store = open_store(uri)
        self.fs, self.root = self.store.fs, self.store.root
        self._local = self.store.local
        # what to hand to other processes (Serve replicas, job drivers) whose working folder may differ
        self.location = self.root if self._local else uri
        self.cache_dir = cache_dir or os.environ.get("MAAS_CACHE_DIR") or \
            os.path.join(os.path.expanduser("~"), ".cache", "maas", "artifacts")
        self.cache = FetchCache(self.cache_dir, self.location)

    @property
    def keys(self):
        """The store's named API keys (``maas.registry.keys.Keys``: create, list, get, revoke, rotate)."""
        from maas.registry.keys import Keys

        return Keys(self.store, _who())

    def usage(self, since="24h", key: Optional[str] = None, model: Optional[str] = None,
              hourly: bool = False) -> list:
        """Metered use of this store's endpoints since ``since`` (90m, 24h, 7d, a UTC date or hour, unix
        seconds, None: all): ``maas.registry.usage.Usage`` rows per key, model and version (and UTC hour with
        ``hourly``), as ``maas usage`` prints them."""
        from maas.registry import usage

        rows = usage.read(self.store, since, key, model)
        return rows if hourly else usage.totals(rows)

    # ------------------------------------------------------------------------------------------ reads
    def list_models(self) -> list[str]:
        """The names of every model in the store."""
        return [n for n in self.store.list_dirs("models") if _valid(n)]

    def _listing(self, name: str) -> tuple[list[int], set[int]]:
        """(every committed version number, the deleted ones among them): one listing."""
        base = f"models/{ModelVersion.check_name(name)}/versions/"
        committed, deleted = [], set()
        for info in self.store.list(base.rstrip("/")):
            number, _, leaf = info.key[len(base):].partition("/")
            if number.isdigit() and leaf in (MANIFEST, deletion.DELETED):
                (committed.append if leaf == MANIFEST else deleted.add)(int(number))
        return sorted(committed), deleted & set(committed)

    def _version_numbers(self, name: str) -> list[int]:
        """The versions that exist (committed, not deleted), oldest first."""
        committed, deleted = self._listing(name)
        return [v for v in committed if v not in deleted]

    def list_versions(self, name: str) -> list[ModelVersion]:
        aliases = self.aliases(name)
        return [self._with_aliases(self._manifest(name, v, deleted_checked=True), aliases)
                for v in self._version_numbers(name)]

    def get_version(self, name: str, version: int) -> ModelVersion:
        return self._with_aliases(self._manifest(name, version), self.aliases(name))

    @staticmethod
    def _with_aliases(mv: ModelVersion, aliases: dict[str, int]) -> ModelVersion:
        mv.aliases = [a for a, v in aliases.items() if v == mv.version]
        return mv

    def _manifest(self, name: str, version: int, deleted_checked: bool = False) -> ModelVersion:
        """The validated manifest of ``name/version`` (no alias is read); a deleted version is an error
        (``deleted_checked``: the caller's listing already left deleted versions out)."""
        ModelVersion.check_name(name)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RegistryError(f"invalid version {version!r}: a number >= 1")
        key = f"models/{name}/versions/{version}/{MANIFEST}"
        raw = self.store.read_bytes(key)
        if raw is None:
            known = self._version_numbers(name)
            if not known:
                raise NotFoundError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
            raise NotFoundError(f"model {name!r} has no version {version}; versions: {known}")
        where = f"{self.location}/{key}"
        try:
            mv = ModelVersion.model_validate(json.loads(raw.decode()))
        except (ValueError, UnicodeDecodeError, ValidationError) as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]) \
                if isinstance(exc, ValidationError) else str(exc)[:300]
            raise RegistryError(f"{where}: damaged or invalid manifest ({detail or 'empty file'}); this version "
                                "cannot be loaded. Publish the model again (a new version), or restore the file "
                                "from a backup.") from None
        if mv.name != name or mv.version != version:
            raise RegistryError(f"{where}: the manifest claims to be {mv.name}/{mv.version}, not {name}/{version} "
                                "(planted or copied by hand); refusing it")
        if not deleted_checked:
            deletion.check_not_deleted(self.store, name, version, self._version_numbers)
        return mv

    def aliases(self, name: str) -> dict[str, int]:
        """{alias: version} for the aliases that point somewhere."""
        newest = alias_log.latest(self.store, ModelVersion.check_name(name))
        return {a: m["version"] for a, m in newest.items() if m["version"] is not None and _valid(a)}

    def alias_history(self, name: str, alias: Optional[str] = None) -> list[dict]:
        """Every move of ``name``'s aliases (or of one), oldest first: {alias, seq, version, previous, at, by}."""
        logs = alias_log.read_logs(self.store, ModelVersion.check_name(name))
        if alias is not None:
            logs = {alias: logs.get(ModelVersion.check_name(alias, "alias"), [])}
        return sorted(({"alias": a, **m} for a, moves in logs.items() for m in moves),
                      key=lambda m: (m.get("at") or 0, m["alias"], m["seq"]))

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias``, ``name/version`` or ``name`` (the latest version) -> its ModelVersion (manifest:
        files with sha256, metrics, lineage, signature, status, aliases).

        Raises:
            RegistryError: no such model, alias or version (the message lists what exists).

        Example:
            >>> Registry(".maas").resolve("digits@production").ref
            'digits/2'
        """
        name, version, alias = parse_ref(ref)
        aliases = self.aliases(name)
        if alias is not None:
            if alias not in aliases:
                if not self._version_numbers(name):
                    raise NotFoundError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
                raise NotFoundError(f"model {name!r} has no alias {alias!r}; aliases: {sorted(aliases) or 'none'}")
            version = aliases[alias]
        if version is None:
            known = self._version_numbers(name)
            if not known:
                raise NotFoundError(f"no model named {name!r} in {self.uri} (see `maas models list`)")
            version = known[-1]
        return self._with_aliases(self._manifest(name, version), aliases)

    # ------------------------------------------------------------------------------------------ writes
    def publish(self, name: str, files: dict[str, str | Path], *, runtime: str, metrics: Optional[dict] = None,
                lineage: Optional[dict] = None, signature: Optional[dict] = None, task: Optional[str] = None,
                status: str = "ready", description: str = "", _stop_after_files: Optional[int] = None,
                _before_commit: Optional[Callable[[], None]] = None) -> ModelVersion:
        """Publish local ``files`` ({artifact name: local path}) as the next version of ``name``.

        The version becomes visible at once and whole, when its manifest is committed, after every file is
        uploaded and checksummed. ``task`` (classify, classify_text, embed, generate) picks its predictor and
        routes when served; by default the task its ``signature`` describes. ``_stop_after_files`` (tests)
        stops like a killed publisher would: uploads left behind, nothing committed, nothing cleaned;
        ``_before_commit`` (tests) runs between the last upload and the commit.

        Raises:
            RegistryError: bad name, missing file, or the store cannot be written.
        """
        ModelVersion.check_name(name)
        if not files:
            raise RegistryError("publish needs at least one artifact file")
        if task is not None and task not in TASKS:
            raise RegistryError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        for art, src in files.items():
            if not isinstance(art, str) or not ARTIFACT.fullmatch(art) or art == MANIFEST:
                raise RegistryError(f"invalid artifact name {art!r}: use a plain file name")
            if not Path(src).is_file():
                raise RegistryError(f"artifact {art!r}: file not found: {src}")
        upload_id = unique_id()
        objects = f"objects/{upload_id}"
        prefix = f"models/{name}/{objects}"
        try:
            with Lease(self.store, f"models/{name}/.leases/{upload_id}"):
                entries = self._upload(files, prefix, _stop_after_files)
                if _before_commit is not None:
                    _before_commit()
                self._check_uploads(name, prefix, entries)
                for _ in range(1000):
                    version = (self._listing(name)[0] or [0])[-1] + 1  # deleted numbers stay taken
                    mv = ModelVersion(name=name, version=version, created_at=time.time(), runtime=runtime,
                                      task=task or task_from_signature(signature), files=entries,
                                      objects=objects, metrics=metrics or {}, lineage=lineage or {},
                                      signature=signature or {}, status=status, description=description)
                    body = mv.model_dump_json(indent=2, exclude={"aliases"}).encode()
                    if self.store.create(f"models/{name}/versions/{version}/{MANIFEST}", body):
                        return mv
            raise RegistryError(f"could not allocate a version number for {name!r} after 1000 attempts")
        except Stopped:
            raise RegistryError("publish stopped before committing (test hook)") from None
        except BaseException:
            self.store.delete_prefix(prefix)  # our own uploads: no manifest names them
            raise

    def _upload(self, files: dict, prefix: str, stop_after_files: Optional[int]) -> dict:
        entries = {}
        for i, (art, src) in enumerate(sorted(files.items())):
            if stop_after_files is not None and i >= stop_after_files:
                raise Stopped()
            sha, size = self.store.upload(Path(src), f"{prefix}/{art}")
            entries[art] = {"sha256": sha, "size": size}
        return entries

    def _check_uploads(self, name: str, prefix: str, entries: dict) -> None:
        """What was uploaded is still there (a gc run that ignored the lease, a hand on the store): a version
        is never committed with files missing."""
        present = {info.key.rsplit("/", 1)[-1]: info.size for info in self.store.list(prefix)}
        gone = sorted(a for a, meta in entries.items() if present.get(a) != meta["size"])
        if gone:
            raise RegistryError(f"{name}: uploads {gone} of this publication disappeared from the store before it "
                                "committed (was `maas models gc` run with a short grace?); nothing was committed: "
                                "publish again")

    def set_alias(self, name: str, alias: str, version: int, *, expected: Any = UNCHECKED,
                  by: Optional[str] = None, force: bool = False, reason: Optional[str] = None) -> dict:
        """Point ``alias`` at ``version`` if it still points at ``expected`` (a version, or None for no alias;
        by default: whatever it points at when read here). A ``candidate`` (it lost to the champion) moves
        only with ``force`` and a ``reason``, which the alias history keeps. Returns the move {version,
        previous, at, by, seq[, reason]}.

        Raises:
            RegistryError: the version does not exist, was rejected by its gate, or is a candidate without
                ``force`` and ``reason``; the alias points elsewhere than ``expected``; or another move landed
                first (nothing is overwritten).
        """
        ModelVersion.check_name(alias, what="alias")
        mv = self.get_version(name, version)
        why = f" (reason: {mv.description or 'see its metrics'})"
        if mv.status == "candidate" and not (force and reason and reason.strip()):
            raise RegistryError(f"{name}/{version} is a candidate: it did not match the champion{why}; to give it "
                                f"{alias!r} anyway: maas models alias {name} {alias} {version} --force --reason TEXT")
        if mv.status not in ("ready", "candidate"):
            raise RegistryError(f"{name}/{version} is {mv.status!r} and cannot take alias {alias!r}{why}")
        move = alias_log.move(self.store, name, alias, version, expected, by or _who(),
                              reason=reason.strip() if reason else None)
        deletion.undo_if_deleted(self.store, name, alias, move)  # a deletion that raced this move wins
        return move

    def delete_alias(self, name: str, alias: str, *, expected: Any = UNCHECKED, by: Optional[str] = None) -> dict:
        """Remove ``alias`` (ends a canary trial; served replicas stop answering it), compare-and-swap like
        ``set_alias``. Returns the move; raises RegistryError when the alias does not exist."""
        ModelVersion.check_name(name)
        ModelVersion.check_name(alias, what="alias")
        if alias not in self.aliases(name):
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        return alias_log.move(self.store, name, alias, None, expected, by or _who())

    def delete_version(self, name: str, version: int, *, by: Optional[str] = None,
                       reason: Optional[str] = None) -> ModelVersion:
        """Delete ``name/version``: it is no longer listed, resolved, fetched or served, its number is never
        given to another version, and ``gc`` removes its files. Refused while an alias points at it (move or
        remove the alias first). Returns the deleted version.

        Raises:
            RegistryError: no such version, already deleted, or an alias points at it.
        """
        mv = self.get_version(name, version)
        deletion.delete(self.store, mv, self.aliases, by or _who(), reason)
        return mv

    def gc(self, grace_s: float = GC_GRACE_S, lease_s: float = LEASE_VALID_S) -> int:
        """Remove uploads that no manifest names (a killed or failed publisher's), once their newest file is
        older than ``grace_s`` and their publication's lease older than ``lease_s`` (a publication in progress
        keeps its lease fresh, whatever ``grace_s``). Returns how many were removed."""
        removed, now = 0, time.time()
        for name in self.list_models():
            used = set()
            for v in self._version_numbers(name):
                try:
                    used.add(self._manifest(name, v, deleted_checked=True).objects)
                except RegistryError:
                    return removed  # a damaged manifest might name any upload: keep everything
            leases = {i.key.split("/")[3]: i.mtime for i in self.store.list(f"models/{name}/.leases")}
            newest: dict[str, float] = {}
            for info in self.store.list(f"models/{name}/objects") + self.store.list(f"models/{name}/.staging"):
                group = "/".join(info.key.split("/")[2:4])  # objects/<id> or .staging/<id>
                newest[group] = max(newest.get(group, 0.0), info.mtime)
            for group, mtime in newest.items():
                upload_id = group.split("/")[1]
                if group in used or now - mtime <= grace_s or now - leases.get(upload_id, 0.0) <= lease_s:
                    continue
                self.store.delete_prefix(f"models/{name}/{group}")
                self.store.delete_prefix(f"models/{name}/.leases/{upload_id}")
                removed += 1
            for upload_id, at in leases.items():  # a publisher killed before its first upload
                if f"objects/{upload_id}" not in newest and now - at > lease_s:
                    self.store.delete_prefix(f"models/{name}/.leases/{upload_id}")
        return removed

    # ------------------------------------------------------------------------------------------ fetch
    def fetch(self, ref: str, progress: Optional[Callable[[str], None]] = None) -> tuple[Path, ModelVersion]:
        """A local folder holding ``ref``'s artifacts, and nothing else, every file checked against its sha256.
        ``progress`` hears "fetching" before files are downloaded and "verifying" before they are checked.

        Raises:
            IntegrityError: a file is missing, has the wrong size, its bytes changed since publication, or the
                folder holds a file the manifest does not list.
        """
        return self.fetch_version(self.resolve(ref), progress)

    def fetch_version(self, mv: ModelVersion,
                      progress: Optional[Callable[[str], None]] = None) -> tuple[Path, ModelVersion]:
        """``fetch`` for a version whose manifest was already read (``resolve``): not read again."""
        home = f"models/{mv.name}/{mv.objects}" if mv.objects else f"models/{mv.name}/versions/{mv.version}"
        if self._local:
            folder = Path(self.store.path(home))
            if progress is not None:
                progress("verifying")
            verify_files(folder, mv, allowed_extra=() if mv.objects else (MANIFEST,))
            return folder, mv

        def download(art: str, dest: Path) -> None:
            try:
                self.store.download(f"{home}/{art}", dest)
            except OSError as exc:  # FileNotFoundError too
                raise IntegrityError(f"{mv.ref}: artifact {art!r} cannot be read from {self.location}/{home} "
                                     f"({type(exc).__name__}: {exc}); the version is damaged, publish it again") \
                    from None

        return self.cache.get(mv, download, progress), mv


def _valid(name: str) -> bool:
    try:
        ModelVersion.check_name(name)
        return True
    except RegistryError:
        return False


__all__ = ["GC_GRACE_S", "Registry", "UNCHECKED", "sha256_file"]
