"""The Ray auth token on the client side: where it is found, when it may be sent, what to say when it fails."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def find_token() -> Optional[str]:
    """The Ray auth token as Ray's own clients find it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    return None


def _auth_enabled() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "token").lower() != "disabled"


NO_TOKEN = ("no Ray auth token found. This cluster uses token authentication (Ray 2.60's default, which maas "
            "keeps on). Copy the token from the head node (`cat ~/.ray/auth_token` there) and either save it "
            "to ~/.ray/auth_token here or `export RAY_AUTH_TOKEN=<token>`.")
BAD_TOKEN = ("the Ray cluster at {address} rejected the auth token ({source}). Use the head node's token: "
             "`cat ~/.ray/auth_token` on the head, then save it to ~/.ray/auth_token here or "
             "`export RAY_AUTH_TOKEN=<token>`.")


def _is_local(address: str) -> bool:
    return _host(address) in ("127.0.0.1", "localhost", "0.0.0.0", "::1")


def _host(address: str) -> str:
    from urllib.parse import urlparse

    return (urlparse(address if "://" in address else f"http://{address}").hostname or "").lower()


def _loopback(address: str) -> bool:
    """Whether ``address`` names this machine (127.0.0.0/8, ::1, localhost): traffic never leaves it."""
    import ipaddress

    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


CLEAR_TEXT = ("refusing to send the Ray auth token in clear text to {address}: anyone on the network path could "
              "read it and run code on the cluster. Use an https:// address (a TLS proxy in front of the "
              "dashboard), or forward the dashboard port to this machine (`ray dashboard cluster.yaml`, or `ssh "
              "-L 8265:localhost:8265 <head>`) and pass --address http://127.0.0.1:8265. On a network you trust, "
              "pass --insecure (Client(insecure=True), or MAAS_INSECURE=1).")
