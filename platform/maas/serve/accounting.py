"""Per-request accounting kept off the request path: Prometheus metrics and the JSON access log.

A request only appends a tuple; every ``flush_s`` (or every ``max_pending`` requests) the replica's event
loop turns the pending tuples into metrics (one counter increment per model, version and status; one
histogram observation per request or fused model call) and access-log lines, written in one ``write`` to the
replica's own Serve log file in Serve's line layout (``LEVEL time component id -- message``; a JSON object
per line when Serve logs JSON). Measured in a replica on this 2-core machine: ``logger.info`` costs ~30 us a
line (Ray's record factory, context filters and formatter), a metric call 3-4 us, against ~50 us for the
whole bare model request; accounting is under 3 us a request this way (docs/design/serving.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from typing import Optional

import orjson

logger = logging.getLogger("ray.serve")
LATENCY_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ReplicaLogSink:
    """Writes whole lines to the file the Serve logger of this process writes to (the replica's log), in
    its layout; without one (not inside a replica), hands each line to that logger."""

    def __init__(self):
        self.path, self.prefix, self.json = None, "%(levelname)s %(asctime)s ", False
        for handler in logger.handlers:
            target = getattr(handler, "target", handler)  # Serve wraps its file handler in a MemoryHandler
            if isinstance(target, logging.FileHandler):
                self.path = target.baseFilename
                fmt = target.formatter
                self.json = fmt is not None and "json" in type(fmt).__name__.lower()
                self.prefix = getattr(fmt, "component_log_fmt", self.prefix)  # Serve's "LEVEL time name id "
                break
        self.fd: Optional[int] = None
        self.inode = None
        self._second, self._stamp = None, ""

    def asctime(self, t: float) -> str:
        """``logging``'s default time layout (``2026-11-27 12:05:38,360``), the seconds part cached."""
        second = int(t)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((t - second) * 1000):03d}"

    def line(self, t: float, entry: dict) -> str:
        if self.json:
            return orjson.dumps({"levelname": "INFO", "asctime": self.asctime(t), "message": "maas access",
                                 **entry}).decode()
        head = self.prefix % {"levelname": "INFO", "asctime": self.asctime(t)}
        return f"{head}-- {orjson.dumps(entry).decode()}"

    def write(self, entries: list) -> None:
        """``entries``: (unix time, access-log object) pairs, written as one append."""
        if not entries:
            return
        if self.path is None:
            for _, entry in entries:
                logger.info(orjson.dumps(entry).decode())
            return
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if self.fd is None or inode != self.inode:  # first write, or Serve rotated its log
            self.close()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.inode = os.fstat(self.fd).st_ino
        os.write(self.fd, "".join(self.line(t, e) + "\n" for t, e in entries).encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Accounting:
    """Counts, times and logs model requests for one replica (see the module docstring)."""

    def __init__(self, flush_s: float = 0.25, max_pending: int = 2048):
        from ray.serve import metrics

        self.m_requests = metrics.Counter("maas_requests_total", description="Inference requests by HTTP status.",
                                          tag_keys=("model", "version", "code"))
        self.m_latency = metrics.Histogram("maas_request_latency_ms", description="Inference latency (ms).",
                                           boundaries=LATENCY_MS, tag_keys=("model", "version"))
        self.m_batch = metrics.Histogram("maas_batch_size", description="Rows per fused model call.",
                                         boundaries=BATCH_SIZES, tag_keys=("model", "version"))
        self.m_key_requests = metrics.Counter(
            "maas_key_requests_total", description="Inference requests of named API keys by HTTP status.",
            tag_keys=("key", "model", "version", "code"))
        self.m_key_tokens = metrics.Counter(
            "maas_key_tokens_total", description="Prompt and completion tokens of named API keys.",
            tag_keys=("key", "model", "version", "kind"))
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.requests: list = []  # (time, tags, status, request id, path, rows, latency ms, extra fields)
        self.batches: list = []  # (tags, rows)
        self.sink = ReplicaLogSink()
        self._timer = None

    def request(self, tags: dict, status: int, rid: Optional[str], path: str, rows: int, elapsed_ms: float,
                extra: Optional[dict] = None):
        self.requests.append((time.time(), tags, status, rid, path, rows, elapsed_ms, extra))
        self._due()

    def batch(self, tags: dict, rows: int) -> None:
        self.batches.append((tags, rows))
        self._due()

    def _due(self) -> None:
        if len(self.requests) + len(self.batches) >= self.max_pending:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
            except RuntimeError:  # no event loop in this thread: account now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        requests, self.requests = self.requests, []
        batches, self.batches = self.batches, []
        counts: Counter = Counter()
        keyed: Counter = Counter()  # named keys' requests and tokens (the key's name, never its secret)
        entries = []
        for t, tags, status, rid, path, rows, ms, extra in requests:
            counts[(tags["model"], tags["version"], str(status))] += 1
            if extra and "key" in extra:
                keyed[("r", extra["key"], tags["model"], tags["version"], str(status))] += 1
                for kind in ("prompt", "completion"):
                    keyed[("t", extra["key"], tags["model"], tags["version"], kind)] += extra.get(f"{kind}_tokens", 0)
            self.m_latency.observe(ms, tags=tags)
            version = tags["version"]
            entry = {"maas_access": True, "request_id": rid, "model": tags["model"],
                     "version": int(version) if version.isdigit() else None, "path": path,
                     "status": status, "rows": rows, "latency_ms": round(ms, 3)}
            entries.append((t, {**entry, **extra} if extra else entry))
        for (model, version, code), n in counts.items():
            self.m_requests.inc(n, tags={"model": model, "version": version, "code": code})
        for (what, key, model, version, last), n in keyed.items():
            if what == "r":
                self.m_key_requests.inc(n, tags={"key": key, "model": model, "version": version, "code": last})
            elif n > 0:
                self.m_key_tokens.inc(n, tags={"key": key, "model": model, "version": version, "kind": last})
        for tags, rows in batches:
            self.m_batch.observe(rows, tags=tags)
        try:
            self.sink.write(entries)
        except OSError as exc:  # a full disk must not fail requests; say so once per flush
            logger.warning("maas access log: could not write %d line(s): %s", len(entries), exc)

    def close(self) -> None:
        self.flush()
        self.sink.close()
