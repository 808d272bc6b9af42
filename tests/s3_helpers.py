"""A real S3 API for tests: moto's server on 127.0.0.1, started as its own process and ended by its PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def moto_server() -> Iterator[str]:
    """Yields the endpoint URL of a fresh moto S3 server."""
    import requests

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                assert proc.poll() is None and time.time() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.kill()  # an in-memory S3: nothing to flush (a terminate waits on the server's open connections)
        proc.wait(timeout=30)


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
