"""API keys for model routes: read from the environment or a file, never from the spec.

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

KEYS_ENV, KEYS_FILE_ENV = "MAAS_API_KEYS", "MAAS_API_KEYS_FILE"


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
