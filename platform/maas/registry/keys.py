"""Named API keys, kept in the registry's store beside the models: ``keys/<name>/<seq>.json``, one record per
change (made, rotated, revoked), the newest ``seq`` the key's state. Each change is written create-only after
reading the newest, the compare-and-swap the aliases use (``maas.registry.aliases``): two writers can never
both write one ``seq``, so a lost race is a clear error, never a silent overwrite, and the records are the
key's history.

Only the sha256 digest of a secret is stored, with its first characters (``prefix``) to tell keys apart. The
secret is made here and said once, when the key is made or rotated. A key may call the models whose names
match one of its ``models`` patterns (shell-style: ``*``, ``?``; every model when none is given), until it
expires or is revoked. Serving replicas read the records every few seconds (``maas.serve.tenancy.KeyRing``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from maas.exceptions import ConflictError, NotFoundError, RegistryError
from maas.registry.objects import Store

PREFIX = "keys"
SECRET_PREFIX = "maas-"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]-]{1,128}")
_SEQ = re.compile(r"[0-9]{10}\.json")
LIMITS = ("rpm", "requests_per_day", "tpm", "tokens_per_day")  # limits a key may carry (maas.serve.limits)
MAX_LIMIT = 10**9


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class ApiKey:
    name: str
    digest: str                 # sha256 of the secret
    prefix: str                 # the secret's first characters, as lists show it
    models: list = field(default_factory=list)  # name patterns it may call; empty: every model
    created_at: float = 0.0
    expires_at: Optional[float] = None
    revoked_at: Optional[float] = None
    change: str = "created"     # what the newest record did: created, rotated, revoked
    by: str = ""
    at: float = 0.0             # when the newest record was written
    seq: int = 1
    rpm: Optional[int] = None               # requests per minute, across every replica
    requests_per_day: Optional[int] = None  # requests per UTC day
    tpm: Optional[int] = None               # prompt + completion tokens per minute
    tokens_per_day: Optional[int] = None    # prompt + completion tokens per UTC day
    admin: bool = False                     # may manage keys, move aliases and see everyone's usage over HTTP

    def limits(self) -> tuple:
        """((kind, limit), ...) of the limits it carries."""
        return tuple((k, getattr(self, k)) for k in LIMITS if getattr(self, k) is not None)

    def allows(self, model: str) -> bool:
        return allows(self.models, model)

    def state(self, now: Optional[float] = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at is not None and now >= self.expires_at else "active"

    def to_dict(self) -> dict:
        return asdict(self)


def allows(patterns, model: str) -> bool:
    """Whether a key of model ``patterns`` (none: every model) may call ``model``."""
    return not patterns or any(fnmatch.fnmatchcase(model, p) for p in patterns)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"key name {name!r}: use 1-63 of a-z 0-9 . _ - (starting with a letter or digit)")
    return name


def check_models(patterns: list) -> list:
    bad = [p for p in patterns if not isinstance(p, str) or not _PATTERN.fullmatch(p)]
    if bad:
        raise RegistryError(f"--models {bad[0]!r}: a model name or a pattern of one (letters, digits, . _ - and "
                            "the wildcards * ? [...])")
    return sorted(set(patterns))


def check_limit(kind: str, value) -> Optional[int]:
    """A key's limit as given (None: none).

    Raises:
        RegistryError: not a whole number from 1 to MAX_LIMIT (0 and negatives included), named.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise RegistryError(f"--{kind.replace('_', '-')} must be a whole number from 1 to {MAX_LIMIT:,} (no limit: "
                            f"leave it out; to stop a key: `maas keys revoke`), got {value!r}")
    return value


def create(store: Store, name: str, models: list, expires_at: Optional[float], by: str,
           limits: Optional[dict] = None, admin: bool = False) -> tuple[ApiKey, str]:
    """Make key ``name``: (its record, its secret, said only now).

    Raises:
        RegistryError: a bad name, pattern or expiry, or a key of that name exists (rotate it instead).
    """
    check_name(name)
    unknown = sorted(set(limits or {}) - set(LIMITS))
    if unknown:
        raise RegistryError(f"limit {unknown[0]!r} is not one of {', '.join(LIMITS)}")
    limits = {k: check_limit(k, v) for k, v in (limits or {}).items()}
    now = time.time()
    if expires_at is not None and expires_at <= now:
        raise RegistryError("--expires is in the past: give a later date, or a duration such as 30d")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name, digest(secret), secret[:12], check_models(list(models)), now, expires_at, by=by, at=now,
                 admin=admin is True, **limits)
    if not store.create(_record(name, 1), json.dumps(key.to_dict()).encode()):
        raise ConflictError(f"an API key named {name!r} exists: `maas keys rotate {name}` gives it a new secret, "
                            "or pick another name")
    return key, secret


def rotate(store: Store, name: str, by: str) -> tuple[ApiKey, str]:
    """A new secret for key ``name``; the old one stops working (on every replica within its poll)."""
    key = get(store, name)
    if key.revoked_at is not None:
        raise RegistryError(f"API key {name!r} was revoked; make a new one with `maas keys create`")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return _append(store, key, by, "rotated", digest=digest(secret), prefix=secret[:12]), secret


def revoke(store: Store, name: str, by: str) -> ApiKey:
    key = get(store, name)
    if key.revoked_at is not None:
        return key
    return _append(store, key, by, "revoked", revoked_at=time.time())


def _append(store: Store, key: ApiKey, by: str, change: str, **fields) -> ApiKey:
    now = time.time()
    new = ApiKey(**{**key.to_dict(), **fields, "change": change, "by": by, "at": now, "seq": key.seq + 1})
    if not store.create(_record(key.name, new.seq), json.dumps(new.to_dict()).encode()):
        raise ConflictError(f"API key {key.name!r} changed while this command ran; run it again")
    return new


def get(store: Store, name: str) -> ApiKey:
    """The key's newest record.

    Raises:
        RegistryError: there is no key ``name``.
    """
    found = _listing(store, check_name(name)).get(name)
    if not found:
        raise NotFoundError(f"no API key named {name!r} in {store.uri}; `maas keys list` shows them")
    return load(store, found[-1][1])


def history(store: Store, name: str) -> list[ApiKey]:
    found = _listing(store, check_name(name)).get(name)
    if not found:
        raise NotFoundError(f"no API key named {name!r} in {store.uri}; `maas keys list` shows them")
    return [load(store, k) for _, k in found]


def newest(store: Store) -> dict[str, tuple[int, str]]:
    """{name: (seq, object key) of its newest record}: one listing, no record read."""
    return {name: found[-1] for name, found in _listing(store, None).items()}


def load(store: Store, object_key: str) -> ApiKey:
    raw = store.read_bytes(object_key)
    try:
        rec = json.loads(raw.decode()) if raw is not None else None
        return ApiKey(**rec)
    except (ValueError, TypeError, UnicodeDecodeError, AttributeError) as exc:
        raise RegistryError(f"{store.uri}/{object_key}: damaged API key record ({exc})") from None


def listing(store: Store) -> list[ApiKey]:
    return [load(store, k) for _, k in newest(store).values()]


def _listing(store: Store, only: Optional[str]) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for info in store.list(f"{PREFIX}/{only}" if only else PREFIX):
        name, _, leaf = info.key[len(PREFIX) + 1:].partition("/")
        if _SEQ.fullmatch(leaf) and _NAME.fullmatch(name):
            found.setdefault(name, []).append((int(leaf[:-5]), info.key))
    return {n: sorted(v) for n, v in sorted(found.items())}


def _record(name: str, seq: int) -> str:
    return f"{PREFIX}/{name}/{seq:010d}.json"


class Keys:
    """The SDK's face of a store's API keys (``Registry(uri).keys``): the same operations as ``maas keys``.

    Example:
        >>> from maas.registry import Registry
        >>> key, secret = Registry(".maas").keys.create("team-a", models=["digits*"], expires_in_s=30 * 86400)
        >>> Registry(".maas").keys.revoke("team-a").state()
        'revoked'
    """

    def __init__(self, store: Store, by: str):
        self.store, self.by = store, by

    def create(self, name: str, models: tuple = (), expires_at: Optional[float] = None,
               expires_in_s: Optional[float] = None, rpm: Optional[int] = None,
               requests_per_day: Optional[int] = None, tpm: Optional[int] = None,
               tokens_per_day: Optional[int] = None, admin: bool = False) -> tuple[ApiKey, str]:
        """(the record, the secret: said only now). Limits hold across every replica (``maas.serve.limits``);
        tokens are prompt + completion tokens as the engine counts them. An ``admin`` key may also manage keys,
        move aliases and read everyone's usage over HTTP (``/maas/v1/...``)."""
        when = expires_at if expires_in_s is None else time.time() + expires_in_s
        return create(self.store, name, list(models), when, self.by,
                      {"rpm": rpm, "requests_per_day": requests_per_day, "tpm": tpm,
                       "tokens_per_day": tokens_per_day}, admin)

    def list(self) -> list[ApiKey]:
        return listing(self.store)

    def get(self, name: str) -> ApiKey:
        return get(self.store, name)

    def history(self, name: str) -> list[ApiKey]:
        return history(self.store, name)

    def revoke(self, name: str) -> ApiKey:
        return revoke(self.store, name, self.by)

    def rotate(self, name: str) -> tuple[ApiKey, str]:
        return rotate(self.store, name, self.by)
