"""maas's own routes for the platform's operators, ``/maas/v1/...``: the same actions as ``maas keys``, ``maas
models alias`` and ``maas usage`` on the store, over HTTP, for an **admin key** (``maas keys create NAME
--admin``). A named key that is not an admin may read its own usage; nothing here is open, even on an endpoint
without keys. Mistakes are answered ``{"error": "..."}`` (400 a field named, 401, 403, 404, 409 a race or a
name taken). The store is read and written in a worker thread, never on the event loop.

- ``GET /maas/v1/usage?since=24h&key=NAME&model=NAME&hourly=true``
- ``GET /maas/v1/keys``, ``POST /maas/v1/keys`` (``{"name", "models", "expires_in_s", "rpm", "tpm",
  "requests_per_day", "tokens_per_day", "admin"}``: the secret is in the answer, once), ``GET
  /maas/v1/keys/{key}`` (its history), ``POST /maas/v1/keys/{key}/revoke``, ``POST /maas/v1/keys/{key}/rotate``
- ``GET /maas/v1/models/{name}/aliases``, ``PUT /maas/v1/models/{name}/aliases/{alias}`` (``{"version",
  "expected", "force", "reason"}``: ``expected`` makes the move a compare-and-swap)
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from maas.exceptions import ConflictError, NotFoundError, RegistryError
from maas.serve.errors import ProtocolError
from maas.serve.http import JSONResponse, read_body
from maas.serve.protocols.oip.codec import json_object

ADMIN_ONLY = ("it needs an admin key (`maas keys create NAME --admin` on the endpoint's store); the CLI's "
              "`maas keys`, `maas models alias` and `maas usage` work on the store itself")
KEY_FIELDS = {"name": str, "models": list, "expires_in_s": (int, float), "rpm": int, "requests_per_day": int,
              "tpm": int, "tokens_per_day": int, "admin": bool}
ALIAS_FIELDS = {"version": int, "expected": (int, type(None)), "force": bool, "reason": str}


def _record(key) -> dict:
    """A key's record as HTTP shows it: never its digest."""
    return {**{k: v for k, v in key.to_dict().items() if k != "digest"}, "state": key.state()}


def _status(err: RegistryError) -> int:
    return 404 if isinstance(err, NotFoundError) else 409 if isinstance(err, ConflictError) else 400


def _fields(body: dict, allowed: dict, required: tuple = ()) -> dict:
    """The body's fields, each of its type, or a 400 naming the first that is not (or is missing, or unknown)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ProtocolError(400, f"unknown field {unknown[0]!r}; fields: {', '.join(allowed)}")
    for name in required:
        if name not in body:
            raise ProtocolError(400, f"'{name}' is missing")
    for name, value in body.items():
        kind = allowed[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # true is no number
            raise ProtocolError(400, f"'{name}' must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
    return body


class AdminHandlers:
    def __init__(self, host, server):
        self.host, self.server = host, server  # .registry (the store), .keys (KeyRing), .max_request_bytes

    def _caller(self, request: Request, admin: bool = True):
        caller = self.server.keys.check(request.headers.get("authorization"))
        if admin and not caller.admin:
            who = f"API key {caller.name!r} is not an admin key: " if caller.name else "this route: "
            raise ProtocolError(403, who + ADMIN_ONLY)
        return caller

    async def _store(self, fn, *args, **kwargs):
        """``fn`` in a worker thread; a RegistryError is the client's mistake, with its status."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except RegistryError as err:
            raise ProtocolError(_status(err), str(err)) from None

    async def _body(self, request: Request, allowed: dict, required: tuple = ()) -> dict:
        raw = await read_body(request, self.server.max_request_bytes)
        return _fields(json_object(raw or b"{}", "an object"), allowed, required)

    async def usage(self, request: Request) -> JSONResponse:
        """Everyone's usage for an admin key; its own for any other named key."""
        from maas.registry import usage

        caller = self._caller(request, admin=False)
        q = request.query_params
        key = q.get("key")
        if not caller.admin:
            if caller.name is None:
                raise ProtocolError(403, "usage is kept per named key: ask with a named key (its own usage) or an "
                                         "admin key (everyone's)")
            if key not in (None, caller.name):
                raise ProtocolError(403, f"API key {caller.name!r} may read only its own usage; {ADMIN_ONLY}")
            key = caller.name
        hourly = q.get("hourly", "false").lower() in ("1", "true", "yes")
        rows = await self._store(usage.read, self.host.registry.store, q.get("since", "24h"), key, q.get("model"))
        rows = rows if hourly else usage.totals(rows)
        data = [u.to_dict(hourly) for u in rows]
        return JSONResponse({"object": "list", "data": data})

    async def list_keys(self, request: Request) -> JSONResponse:
        from maas.registry import keys

        self._caller(request)
        found = await self._store(keys.listing, self.host.registry.store)
        return JSONResponse({"object": "list", "data": [_record(k) for k in found]})

    async def create_key(self, request: Request) -> JSONResponse:
        import time

        from maas.registry import keys

        caller = self._caller(request)
        body = await self._body(request, KEY_FIELDS, ("name",))
        expires = body.get("expires_in_s")
        if expires is not None and expires <= 0:
            raise ProtocolError(400, f"'expires_in_s' must be over 0, got {expires!r}")
        key, secret = await self._store(
            keys.create, self.host.registry.store, body["name"], body.get("models", []),
            None if expires is None else time.time() + expires, f"key:{caller.name}",
            {k: body.get(k) for k in keys.LIMITS}, body.get("admin", False))
        return JSONResponse({**_record(key), "secret": secret}, status_code=201)

    async def get_key(self, request: Request, key: str) -> JSONResponse:
        from maas.registry import keys

        self._caller(request)
        found = await self._store(keys.history, self.host.registry.store, key)
        return JSONResponse({**_record(found[-1]), "history": [_record(k) for k in found]})

    async def revoke_key(self, request: Request, key: str) -> JSONResponse:
        from maas.registry import keys

        caller = self._caller(request)
        return JSONResponse(_record(await self._store(keys.revoke, self.host.registry.store, key,
                                                      f"key:{caller.name}")))

    async def rotate_key(self, request: Request, key: str) -> JSONResponse:
        from maas.registry import keys

        caller = self._caller(request)
        record, secret = await self._store(keys.rotate, self.host.registry.store, key, f"key:{caller.name}")
        return JSONResponse({**_record(record), "secret": secret})

    async def aliases(self, request: Request, name: str) -> JSONResponse:
        self._caller(request)
        registry = self.host.registry
        if name not in await self._store(registry.list_models):
            raise ProtocolError(404, f"no model named {name!r} in the store")
        return JSONResponse({"model": name, "aliases": await self._store(registry.aliases, name)})

    async def set_alias(self, request: Request, name: str, alias: str) -> JSONResponse:
        """Move ``alias`` of model ``name``; every replica following it takes the move within its poll."""
        from maas.registry.store import UNCHECKED

        caller = self._caller(request)
        body = await self._body(request, ALIAS_FIELDS, ("version",))
        move = await self._store(self.host.registry.set_alias, name, alias, body["version"],
                                 expected=body["expected"] if "expected" in body else UNCHECKED,
                                 by=f"key:{caller.name}", force=body.get("force", False), reason=body.get("reason"))
        return JSONResponse(json.loads(json.dumps(move, default=str)))
