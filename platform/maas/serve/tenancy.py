"""Who may call: API keys for model routes, never from the spec; one check (``KeyRing.check``) for every
protocol (OIP over REST and gRPC, OpenAI, the Batch API).

Two kinds of keys: unnamed ones from MAAS_API_KEYS / MAAS_API_KEYS_FILE (every model, no expiry), and named
ones kept in the registry's store (``maas.registry.keys``: ``maas keys create``), each limited to the models
its patterns match, until it expires or is revoked. Each replica re-reads the named keys every few seconds,
so a new, rotated or revoked key takes effect on every replica within that time. Only sha256 digests of the
keys reach the Serve deployment (its config is visible in Ray's dashboard) or the store; a request's key is
hashed and looked up by its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from maas.exceptions import ServeError
from maas.serve.errors import ProtocolError

KEYS_ENV, KEYS_FILE_ENV = "MAAS_API_KEYS", "MAAS_API_KEYS_FILE"
BAD_KEY = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_api_key_hashes() -> list[str]:
    """Digests of the keys in MAAS_API_KEYS (comma-separated) and MAAS_API_KEYS_FILE (one per line, '#'
    comments). Empty: the endpoint is open.

    Raises:
        ServeError: MAAS_API_KEYS_FILE names a missing file, or a key is shorter than 16 characters.
    """
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    path = os.environ.get(KEYS_FILE_ENV)
    if path:
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as exc:
            raise ServeError(f"{KEYS_FILE_ENV}={path}: cannot read the API key file ({exc.strerror})") from None
        keys += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ServeError(f"{len(short)} API key(s) shorter than 16 characters; use long random keys "
                         "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return sorted({key_digest(k) for k in keys})


logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Caller:
    """Who asks: a named key (``name``, the models it may call), an unnamed key, or anyone on an open endpoint."""
    name: Optional[str] = None
    models: tuple = ()  # patterns; empty: every model
    digest: str = "open"
    limits: tuple = ()  # ((kind, limit, its bucket's name), ...): maas.serve.limits
    admin: bool = False  # may use the admin routes (maas.serve.protocols.admin)
    _allowed: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # model -> allows it

    def allows(self, model: str) -> bool:
        from maas.registry.keys import allows

        known = self._allowed.get(model)
        if known is None:
            known = allows(self.models, model)
            if len(self._allowed) < 1024:  # names a client sends: bounded
                self._allowed[model] = known
        return known

    def check_model(self, model: str) -> None:
        """Raises ProtocolError 403 when this key may not call ``model``."""
        if not self.allows(model):
            raise ProtocolError(403, f"API key {self.name!r} may not call model {model!r} (its models: "
                                     f"{', '.join(self.models)}); ask for a key that may, or `maas keys create "
                                     f"--models {model}`")


OPEN = Caller()  # anyone, on an endpoint without keys


class KeyRing:
    """The keys a replica takes: the unnamed ones' digests and the store's named keys, re-read every ``poll_s``
    (the alias watcher's period) in a thread of its own, off the request path."""

    def __init__(self, store: Optional[str], digests: list):
        self.digests = list(digests)
        self.store = None
        self.named: dict = {}       # name -> ApiKey (its newest record)
        self.by_digest: dict = {}   # digest -> (ApiKey, its Caller: made once, not per request)
        self._stop = threading.Event()
        self._known: dict = {}  # authorization header -> (ApiKey or None, Caller) of keys that were valid
        if store is not None:
            from maas.registry.objects import open_store

            self.store = open_store(store)
            self.refresh()

    @property
    def required(self) -> bool:
        """Whether a request needs a key: some unnamed key is configured, or the store holds a named one."""
        return bool(self.digests or self.named)

    def refresh(self) -> None:
        """Re-read what changed since the last read: one listing, and a read per new record."""
        from maas.registry import keys

        newest = keys.newest(self.store)
        named = {n: k for n, k in self.named.items() if n in newest and k.seq == newest[n][0]}
        for name, (_, key) in newest.items():
            if name not in named:
                named[name] = keys.load(self.store, key)
        if named != self.named or len(named) != len(self.named):
            self.named, self.by_digest = named, {k.digest: (k, caller_of(k)) for k in named.values()}
            self._known = {}  # a key changed: every header is checked again

    def start(self, poll_s: float) -> None:
        if self.store is not None and poll_s > 0:
            threading.Thread(target=self._watch, args=(poll_s,), name="maas-key-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.refresh()
            except Exception as err:  # the store is unreachable for a while: keep the keys read last
                logger.warning("maas could not re-read the API keys: %s", err)

    def check_request(self, request) -> Caller:
        """``check`` of a request's ``authorization`` header, once per request (a model request's caller is
        kept in its scope); a named key's name goes to its access-log line."""
        scope = request.scope.get("maas")
        if scope is not None and "caller" in scope:
            return scope["caller"]
        caller = self.check(request.headers.get("authorization"))
        if scope is not None:
            scope["caller"] = caller
            if caller.name:
                scope["key"] = caller.name
        return caller

    def check(self, authorization: Optional[str], where: str = "") -> Caller:
        """The caller of a request whose ``authorization`` header (or gRPC metadata) is given.

        Raises:
            ProtocolError: 401 with ``www-authenticate: Bearer`` for no key, an unknown one, or a named key
                that expired or was revoked (named, with when).
        """
        if not self.required:
            return OPEN
        hit = self._known.get(authorization)
        # still the key the store holds now (a check racing a refresh may have cached an older record)
        if hit is not None and self.by_digest.get(hit[1].digest, (None,))[0] is hit[0] and \
                (hit[0] is None or hit[0].state() == "active"):
            return hit[1]
        caller = self._check(authorization, where)
        if len(self._known) < 10_000:
            self._known[authorization] = (self.by_digest.get(caller.digest, (None,))[0], caller)
        return caller

    def _check(self, authorization: Optional[str], where: str) -> Caller:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ProtocolError(401, BAD_KEY + where, {"www-authenticate": "Bearer"})
        presented = key_digest(authorization[7:].strip())
        if any(hmac.compare_digest(presented, d) for d in self.digests):
            return Caller(digest=presented)  # an unnamed key: every model, no limits
        key, caller = self.by_digest.get(presented, (None, None))
        if key is None:
            raise ProtocolError(401, BAD_KEY + where, {"www-authenticate": "Bearer"})
        state = key.state()
        if state != "active":
            when = key.revoked_at if state == "revoked" else key.expires_at
            raise ProtocolError(401, f"API key {key.name!r} {'was revoked' if state == 'revoked' else 'expired'} "
                                     f"at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(when))}; ask its "
                                     "owner for a new one", {"www-authenticate": "Bearer"})
        return caller


def caller_of(key) -> Caller:
    """The Caller a named key's requests carry."""
    return Caller(key.name, tuple(key.models), key.digest,
                  tuple((kind, limit, f"{key.digest}:{kind}") for kind, limit in key.limits()), key.admin is True)
