"""Metered usage, kept in the registry's store beside the models and keys: per key, model, version and UTC
hour, the requests, errors, prompt and completion tokens and rows (OIP) that endpoints answered.

Each serving replica is a *writer* (a fresh id per process) that keeps its own running totals and writes them
whole, one object per writer and hour: ``usage/<YYYY-MM-DDTHH>/<writer>.json``. Nothing is ever appended or
merged in place, so no two writers race on one object, a rewrite can only replace a writer's own earlier totals
(never count them twice), and a restarted replica is a new writer whose totals start from zero. Readers sum
the objects of the hours they are asked about (``read``), skipping any object that is not what a writer writes.
The same layout works on a local disk and on object storage: the store is where a cluster already keeps its
models, so usage needs no database of its own.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

from maas.exceptions import RegistryError
from maas.registry.objects import Store

PREFIX = "usage"
FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "rows")
ANONYMOUS = "-"  # requests without a named key (an unnamed key, or an open endpoint)
_HOUR = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}")
_WRITER = re.compile(r"[A-Za-z0-9_-]{1,128}\.json")
MAX_ROWS = 100_000  # rows of one writer's hour read at most (a hostile object cannot exhaust a reader)
logger = logging.getLogger(__name__)


def hour_of(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(t))


@dataclass
class Usage:
    """One row of ``read``: what ``key`` asked of ``model``'s ``version`` in ``hour`` (UTC)."""
    hour: str
    key: str
    model: str
    version: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rows: int = 0

    def to_dict(self, hourly: bool = True) -> dict:
        """The row as JSON answers it; without its ``hour`` when it is a total of several (``totals``)."""
        row = asdict(self)
        if not hourly:
            del row["hour"]
        return row


class UsageWriter:
    """One writer's running totals, per hour: ``add`` (any thread) and ``write`` (the totals of the hours that
    changed since the last write, each object whole). ``pos``: where in its journal the totals reach (kept in
    each object, so a recovery of the journal adds only what no object holds yet: ``maas.serve.metering``)."""

    def __init__(self, store: Store, writer: str):
        if not _WRITER.fullmatch(writer + ".json"):
            raise RegistryError(f"usage writer id {writer!r}: use 1-128 of A-Z a-z 0-9 _ -")
        self.store, self.writer = store, writer
        self.totals: dict = {}  # hour -> {(key, model, version): [requests, errors, prompt, completion, rows]}
        self.dirty: set = set()
        self.pos: list = [0, 0]  # [journal generation, offset] the totals include up to
        self.position = lambda: list(self.pos)  # read under ``lock`` when the totals are taken (a meter's own)
        self.written: list = [0, 0]  # the position the store holds everything up to
        self.lock = threading.Lock()

    def add(self, t: float, key: Optional[str], model: str, version: str, status: int, rows: int = 0,
            prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self.lock:
            self.add_locked(hour_of(t), key, model, version, status, rows, prompt_tokens, completion_tokens)

    def add_locked(self, hour: str, key: Optional[str], model: str, version: str, status: int, rows: int,
                   prompt_tokens: int, completion_tokens: int) -> None:
        """``add`` with ``lock`` held by the caller (who may move ``pos`` under the same lock)."""
        per_key = self.totals.get(hour)
        if per_key is None:
            per_key = self.totals[hour] = {}
        k = (key or ANONYMOUS, model, version)
        row = per_key.get(k)
        if row is None:  # (setdefault would make the default list on every call)
            row = per_key[k] = [0] * 5
        row[0] += 1
        row[1] += status >= 400
        row[2] += prompt_tokens
        row[3] += completion_tokens
        row[4] += rows
        self.dirty.add(hour)

    def load(self, hour: str) -> list:
        """Take this writer's object of ``hour`` as its totals (a recovery resumes from it); returns the
        journal position it holds ([-1, -1] when there is none)."""
        body = _body(self.store, f"{PREFIX}/{hour}/{self.writer}.json", hour)
        self.totals[hour] = {tuple(r[:3]): list(r[3:]) for r in (body or {}).get("rows", [])}
        pos = (body or {}).get("pos")
        ok = isinstance(pos, list) and len(pos) == 2 and all(isinstance(n, int) for n in pos)
        return pos if ok else [-1, -1]

    def write(self) -> int:
        """Write the changed hours' totals; returns how many objects were written. An hour that ended is
        dropped once written (its totals cannot change any more)."""
        with self.lock:
            hours, self.dirty = self.dirty, set()
            snapshot = {h: {k: list(v) for k, v in self.totals[h].items()} for h in hours}
            pos = self.position()
            current = hour_of(time.time())
            for h in hours:
                if h < current:
                    del self.totals[h]
        written = 0
        try:
            for hour, rows in sorted(snapshot.items()):
                body = {"writer": self.writer, "hour": hour, "fields": list(FIELDS), "pos": pos,
                        "rows": [[*k, *v] for k, v in sorted(rows.items())]}
                self.store.put(f"{PREFIX}/{hour}/{self.writer}.json", json.dumps(body).encode())
                written += 1
        except BaseException:  # not written: write those hours again next time
            with self.lock:
                for hour, rows in snapshot.items():
                    self._restore(hour, rows)
            raise
        self.written = pos
        return written

    def _restore(self, hour: str, rows: dict) -> None:
        self.dirty.add(hour)
        now = self.totals.setdefault(hour, {})
        for k, v in rows.items():
            if k not in now:  # an ended hour dropped before its write failed
                now[k] = v


_DURATION = re.compile(r"([0-9]+)([mhdw])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def duration_s(text: str) -> Optional[int]:
    """A duration as ``--since`` and ``--expires`` take it ("90m", "24h", "7d", "4w") in seconds, or None
    when ``text`` is not one."""
    match = _DURATION.fullmatch(text.strip())
    return int(match.group(1)) * _UNIT_S[match.group(2)] if match else None


def _parse_since(since) -> Optional[str]:
    """``since``: None, unix seconds, a duration ("24h", "7d", "90m") or a UTC date or hour
    ("2026-12-07", "2026-12-07T15") -> the first hour to read."""
    if since is None:
        return None
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return hour_of(float(since))
    text = str(since).strip()
    seconds = duration_s(text)
    if seconds is not None:
        return hour_of(time.time() - seconds)
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        text += "T00"
    if _HOUR.fullmatch(text):
        return text
    raise RegistryError(f"--since {since!r}: give a duration (90m, 24h, 7d, 4w) or a UTC date or hour (2026-12-07, "
                        "2026-12-07T15)")


def read(store: Store, since=None, key: Optional[str] = None, model: Optional[str] = None) -> list[Usage]:
    """Every writer's totals from ``since`` (see ``_parse_since``) on, summed per hour, key, model and version,
    oldest first; ``key`` / ``model`` keep only those rows."""
    first = _parse_since(since)
    summed: dict = {}
    for hour in store.list_dirs(PREFIX):
        if not _HOUR.fullmatch(hour) or (first is not None and hour < first):
            continue
        for info in store.list(f"{PREFIX}/{hour}"):
            for row in _rows(store, info.key, hour):
                k, counts = tuple(row[:3]), row[3:]
                if (key is None or k[0] == key) and (model is None or k[1] == model):
                    total = summed.setdefault((hour, *k), [0] * 5)
                    for i, n in enumerate(counts):
                        total[i] += n
    return [Usage(*k, *v) for k, v in sorted(summed.items())]


def _rows(store: Store, object_key: str, hour: str) -> list:
    name = object_key.rpartition("/")[2]
    if not _WRITER.fullmatch(name):
        return []
    body = _body(store, object_key, hour)
    return body["rows"] if body else []


def _body(store: Store, object_key: str, hour: str) -> Optional[dict]:
    """A writer's object, checked: one that is not (another file, bad JSON, odd values) is None, with a
    warning, never summed in part."""
    data = store.read_bytes(object_key)
    if data is None:
        return None
    try:
        body = json.loads(data)
        rows = body["rows"]
        if body.get("hour") != hour or body.get("fields") != list(FIELDS) or len(rows) > MAX_ROWS:
            raise ValueError("not a usage object of this hour")
        for row in rows:
            if len(row) != 8 or not all(isinstance(s, str) and len(s) <= 256 for s in row[:3]) or \
                    not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**53 for n in row[3:]):
                raise ValueError(f"a row is not [key, model, version, {', '.join(FIELDS)}]")
        return body
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("maas usage: skipping %s: %s", object_key, exc)
        return None


def totals(rows: list[Usage], by: tuple = ("key", "model", "version")) -> list[Usage]:
    """``rows`` summed over what ``by`` leaves out (the hour by default)."""
    summed: dict = {}
    for u in rows:
        k = tuple(getattr(u, f) if f in by else "" for f in ("hour", "key", "model", "version"))
        total = summed.setdefault(k, [0] * 5)
        for i, f in enumerate(FIELDS):
            total[i] += getattr(u, f)
    return [Usage(*k, *v) for k, v in sorted(summed.items())]
