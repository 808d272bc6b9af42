"""Free TCP ports, for the embedded local Ray's heads and for Serve's side ports (the bottom layer: both
``maas.runtime`` and ``maas.serve`` use it)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now ("": on every interface)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
