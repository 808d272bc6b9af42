"""Publication leases: what keeps ``gc`` off the uploads of a publication in progress."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

LEASE_EVERY_S = 10.0  # a publication in progress refreshes its lease this often
LEASE_VALID_S = 60.0  # gc leaves the uploads of a publication whose lease is younger than this alone


class Stopped(Exception):
    """Raised by the publish test hook to stop as a killed publisher would."""


class Lease:
    """Keeps ``gc`` off a publication in progress, however long its uploads take and whatever grace ``gc`` is
    given: ``models/<name>/.leases/<id>/lease``, rewritten every ``LEASE_EVERY_S`` by a thread until the
    publication committed or failed, then removed (a killed publisher's lease expires after ``LEASE_VALID_S``)."""

    def __init__(self, store, folder: str):
        self.store, self.folder = store, folder
        self._stop = threading.Event()
        fd, name = tempfile.mkstemp(prefix="maas-lease-")
        os.close(fd)
        self._file = Path(name)
        self._thread = threading.Thread(target=self._refresh, name="maas-publish-lease", daemon=True)

    def _write(self) -> None:
        self._file.write_text(str(time.time()))
        self.store.upload(self._file, f"{self.folder}/lease")

    def _refresh(self) -> None:
        while not self._stop.wait(LEASE_EVERY_S):
            try:
                self._write()
            except Exception:  # the store hiccuped: try again at the next tick
                pass

    def __enter__(self) -> "Lease":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, kind, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._file.unlink(missing_ok=True)
        if kind is not Stopped:  # the test hook stops as a killed publisher would: its lease stays behind
            self.store.delete_prefix(self.folder)
