"""The one deadline helper of the test suite: wait for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(cond: Callable[[], object], timeout_s: float, what: str = "", every_s: float = 0.1):
    """Return ``cond()``'s first truthy value, checking every ``every_s`` seconds; fail the test naming
    ``what`` when ``timeout_s`` passes first (``what`` empty: return the last falsy value instead)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            break
        time.sleep(every_s)
    if not value and what:
        raise AssertionError(f"{what}: not within {timeout_s:g} s")
    return value
