"""Free TCP ports, for the embedded local Ray's heads and for Serve's side ports (the bottom layer: both
``maas.runtime`` and ``maas.serve`` use it).

A port found free is not yet bound: Serve binds HAProxy's side ports seconds after they are chosen, so two
Serve instances starting at once on one machine (two ``maas run``, a test suite in two processes) could pick
the same free port. ``claim`` records the choice in a file every maas process on the machine reads (under a
lock), and a port claimed in the last ``CLAIM_S`` seconds is not handed out again."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time

CLAIM_S = 120.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now ("": on every interface)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on every interface here (as Serve binds it: ``[::]``, else 0.0.0.0)."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is free
                sock.bind((addr, port))
            return True
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here: try IPv4
                continue
            return False
    return False


def claim(port: int) -> bool:
    """Claim ``port`` for a listener about to start: False when another process of this user claimed it in
    the last ``CLAIM_S`` seconds (it may not have bound it yet). Where the claims file cannot be used, every
    claim succeeds (the free check alone decides, as before claims)."""
    import fcntl

    path = os.path.join(tempfile.gettempdir(), f"maas-port-claims-{os.getuid()}.json")  # read now: tests move it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return True
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        try:
            claims = json.loads(f.read() or "{}")
        except ValueError:
            claims = {}
        now = time.time()
        claims = {p: t for p, t in claims.items() if isinstance(t, (int, float)) and now - t < CLAIM_S}
        if str(port) in claims:
            return False
        claims[str(port)] = now
        f.seek(0)
        f.truncate()
        f.write(json.dumps(claims))
    return True


def claim_free(port: int) -> bool:
    """``port`` is free here and now claimed by this process."""
    return port_free(port) and claim(port)


def default_or_free(port: int) -> str:
    """``port`` (a default of Ray's) while it is free and unclaimed here, else another free port, claimed."""
    while not claim_free(port):
        port = free_port("")
    return str(port)


def free_window(low: int, high: int, width: int = 100) -> int:
    """The first port of a ``width``-port window in [low, high) whose first port is free and unclaimed here
    (Ray's own window, ``low``, when it is)."""
    import random

    starts = [low] + random.sample(range(low + width, high, width), (high - low) // width - 1)
    return next((p for p in starts if claim_free(p)), low)
