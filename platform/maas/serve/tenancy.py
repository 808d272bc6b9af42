"""Who may call: API keys for model routes, read from the environment or a file, never from the spec; one
check (``check_key``) for every protocol (OIP over REST and gRPC, OpenAI).

Only sha256 digests of the keys reach the Serve deployment (its config is visible in Ray's dashboard);
a request's key is hashed and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
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


def authorized(header: Optional[str], digests: list[str]) -> bool:
    """True when no keys are configured, or ``header`` is ``Bearer <key>`` with a configured key."""
    if not digests:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    presented = key_digest(header[7:].strip())
    return any(hmac.compare_digest(presented, d) for d in digests)


def check_key(authorization: Optional[str], digests: list[str], where: str = "") -> None:
    """The one API-key rule of every route and RPC that needs a key (open when no keys are configured).

    Raises:
        ProtocolError: 401 with ``www-authenticate: Bearer`` when ``authorization`` carries no configured key.
    """
    if not authorized(authorization, digests):
        raise ProtocolError(401, BAD_KEY + where, {"www-authenticate": "Bearer"})
