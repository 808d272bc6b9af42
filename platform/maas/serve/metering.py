"""A replica's usage meter: each model request, as it ends, is added to the replica's running totals (per key,
model, version and hour: ``maas.registry.usage``) and appended as one line to the replica's journal, a local
file; a thread of the replica writes the changed totals to the store every ``interval_s``, never on the
request path.

Why a journal: a replica that is killed (SIGKILL, OOM) cannot write what it added since its last write, but
a line written to a local file is in the kernel's page cache at once, and outlives the process (the journal
is a file mapped into memory: a line is a copy, no system call). Each journal is held under an exclusive
``flock`` while its writer lives; the next replica of the same store on that node finds journals whose lock
it can take (their writer is gone) and adds to that writer's objects what they do not hold yet (each object
records the journal position its totals reach), then deletes the journal. So a killed replica loses only the
requests it had not answered, and nothing is counted twice. Journals rotate at ``JOURNAL_MAX`` bytes once the
store holds everything in them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import re
import secrets
import tempfile
import threading
import time
from typing import Optional

from maas.registry.objects import open_store
from maas.registry.usage import UsageWriter, hour_of

logger = logging.getLogger("ray.serve")
JOURNAL_MAX = 16 * 1024 * 1024
ORPHAN_SCAN_S = 30.0
_JOURNAL = re.compile(r"(?P<writer>[A-Za-z0-9_-]{1,128})\.(?P<gen>[0-9]{6})\.jnl")


def writer_id() -> str:
    """This process's writer id: the Serve replica's id where there is one, and a random part (a replica that
    restarts is a new writer)."""
    try:
        from ray import serve

        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a replica
        replica = "proc"
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', replica)[:64]}-{secrets.token_hex(6)}"


def journal_dir(store_uri: str) -> str:
    """Where this node keeps the journals of one store's writers."""
    return os.path.join(tempfile.gettempdir(), "maas-usage", hashlib.sha256(store_uri.encode()).hexdigest()[:16])


class Journal:
    """One writer's journal files (``<writer>.<gen>.jnl``), each locked while open and mapped into memory:
    a line is a copy into the mapping (no system call: ~4 us less than an ``os.write`` on a request's path),
    in the page cache at once, like a write. A file is made ``JOURNAL_MAX`` long (sparse: only what is written
    takes disk); the zeros after the last line end it."""

    def __init__(self, folder: str, writer: str):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.writer = folder, writer
        self.gen, self.offset, self.fd, self.map = 0, 0, -1, None
        self.old: list = []  # (gen, fd, mapping, path) rotated out, kept locked until the store holds them
        self._open()

    def _path(self, gen: int) -> str:
        return os.path.join(self.folder, f"{self.writer}.{gen:06d}.jnl")

    def _open(self) -> None:
        for attempt in range(3):
            try:
                self.fd = os.open(self._path(self.gen), os.O_RDWR | os.O_CREAT, 0o600)
                break
            except FileNotFoundError:  # the folder, removed by another writer's close as it became empty
                if attempt == 2:
                    raise
                os.makedirs(self.folder, exist_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, JOURNAL_MAX)
        self.map = mmap.mmap(self.fd, JOURNAL_MAX)  # shared: what is copied in is the file's
        self.offset = 0

    def append(self, line: bytes) -> None:
        """Append a line; ``gen`` and ``offset`` are the position after it."""
        end = self.offset + len(line)
        if end > JOURNAL_MAX:
            self.old.append((self.gen, self.fd, self.map, self._path(self.gen)))
            self.gen += 1
            self._open()
            end = len(line)
        self.map[self.offset:end] = line
        self.offset = end

    def release(self, upto_gen: int) -> None:
        """Delete the rotated files before ``upto_gen``: a write of the store holds all of them."""
        keep = []
        for gen, fd, mapped, path in self.old:
            if gen < upto_gen:
                os.unlink(path)
                mapped.close()
                os.close(fd)
            else:
                keep.append((gen, fd, mapped, path))
        self.old = keep

    def close(self, delete: bool) -> None:
        for _, fd, mapped, path in self.old + [(self.gen, self.fd, self.map, self._path(self.gen))]:
            if delete:
                os.unlink(path)
            mapped.close()
            os.close(fd)
        self.old, self.fd, self.map = [], -1, None
        if delete:
            try:
                os.rmdir(self.folder)  # the store's folder goes with its last journal (a test's store: many)
            except OSError:  # another writer's journals are in it
                pass


class UsageMeter:
    def __init__(self, store: str, interval_s: float = 1.0, writer: Optional[str] = None):
        self.store = open_store(store)
        self.writer = UsageWriter(self.store, writer or writer_id())
        self.journal = Journal(journal_dir(self.store.uri), self.writer.writer)
        self.writer.position = lambda: [self.journal.gen, self.journal.offset]
        self.interval_s = interval_s
        self._hour, self._hour_ends, self._prefixes = "", 0.0, {}
        self._wake, self._stop = threading.Event(), threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="maas-usage", daemon=True)
        self._thread.start()

    def add(self, key: Optional[str], model: str, version: str, status: int, rows: int,
            prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """One ended request: into the totals and the journal, under one lock (their positions agree). On the
        request path: ~3 us (a line's start made once per key, model, version and hour)."""
        now = time.time()
        if now >= self._hour_ends:
            self._hour, self._hour_ends, self._prefixes = hour_of(now), (now // 3600 + 1) * 3600, {}
        prefix = self._prefixes.get((key, model, version))
        if prefix is None:
            prefix = self._prefixes[(key, model, version)] = \
                f"{self._hour}\t{key or '-'}\t{model}\t{version}\t".encode()
        line = prefix + b"%d\t%d\t%d\t%d\n" % (status, rows, prompt_tokens, completion_tokens)
        with self.writer.lock:
            try:
                self.journal.append(line)
            except OSError as exc:  # a full /tmp: metered in memory still, written to the store as ever
                self._warn("could not append to its journal", exc)
            self.writer.add_locked(self._hour, key, model, version, status, rows, prompt_tokens, completion_tokens)
        if not self._wake.is_set():  # a set is a lock and a notify: only when the thread may be waiting
            self._wake.set()

    def _run(self) -> None:
        scanned = 0.0
        while not self._stop.is_set():
            if time.monotonic() - scanned > ORPHAN_SCAN_S:
                scanned = time.monotonic()
                self._recover()
            self._wake.wait(ORPHAN_SCAN_S)
            self._wake.clear()
            self._write()
            self._stop.wait(self.interval_s)
        if self._write():
            self.journal.close(delete=True)  # the store holds everything in it

    def _write(self) -> bool:
        try:
            if self.writer.dirty:
                self.writer.write()
                with self.writer.lock:
                    self.journal.release(self.writer.written[0])
            self._warned = False
            return True
        except Exception as exc:  # kept in memory and in the journal; written at the next round
            self._warn("could not write to the store (kept, tried again)", exc)
            self._wake.set()
            return False

    def _recover(self) -> None:
        try:
            for writer in recover_orphans(self.store, self.journal.folder, self.writer.writer):
                logger.info("maas usage: recovered the journal of %s, a replica that ended without writing it",
                            writer)
        except Exception as exc:
            self._warn("could not recover another replica's journal", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:
            logger.warning("maas usage: %s: %s", what, exc)
            self._warned = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is left (then delete the journal) and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)


def recover_orphans(store, folder: str, me: str) -> list[str]:
    """Add to the store what the journals of ended writers hold and their objects do not; delete them."""
    found: dict = {}
    for name in sorted(os.listdir(folder)):
        m = _JOURNAL.fullmatch(name)
        if m and m["writer"] != me:
            found.setdefault(m["writer"], []).append((int(m["gen"]), os.path.join(folder, name)))
    recovered = []
    for writer, files in found.items():
        held = _lock_all(files)
        if held is None:  # its writer lives (or another replica is recovering it)
            continue
        try:
            _fold(store, writer, held)
            for _, path, _ in held:
                os.unlink(path)
            recovered.append(writer)
        finally:
            for _, _, fd in held:
                os.close(fd)
    return recovered


def _lock_all(files: list) -> Optional[list]:
    held = []
    for gen, path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # recovered meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # deleted and made anew since it was listed
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            for _, _, other in held:
                os.close(other)
            return None
        held.append((gen, path, fd))
    return held or None


def _fold(store, writer: str, held: list) -> None:
    """The journal's lines that no object of ``writer`` holds yet, added to its objects."""
    w = UsageWriter(store, writer)
    reach: dict = {}  # hour -> the journal position its object holds
    for gen, _, fd in held:
        offset = 0
        with os.fdopen(os.dup(fd), "rb") as f:
            for line in f:
                if line.startswith(b"\0"):  # past the last line: the rest of the file was never written
                    break
                start, offset = [gen, offset], offset + len(line)
                parts = line.decode(errors="replace").rstrip("\n").split("\t")
                if not line.endswith(b"\n") or "\0" in parts[-1] or len(parts) != 8:  # cut short by the kill
                    continue
                hour = parts[0]
                if hour not in reach:
                    reach[hour] = w.load(hour)
                if start >= reach[hour]:
                    try:
                        numbers = [int(x) for x in parts[4:]]
                    except ValueError:
                        continue
                    w.add_locked(hour, parts[1], parts[2], parts[3], *numbers)
                    w.pos = [gen, offset]
    w.write()
