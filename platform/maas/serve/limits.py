"""Request and token limits of named API keys (``maas keys create --rpm N --requests-per-day N --tpm N
--tokens-per-day N``) that hold across every replica and node of a cluster.

The mechanism: one small Ray actor per cluster (``Limiter``: a count per key, limit and window) hands out
leases, and each replica spends its leases locally. A request costs a dict lookup and a decrement; the actor
is asked only when a replica's lease of that window is spent, for a twentieth of the limit at a time. So no
request waits on another process in the common case, the admitted total of a window never exceeds its
limit (each unit is granted once), and what a replica holds unspent when the window ends (at most a twentieth
of the limit per replica) is the most the cluster can fall short of it. Windows are fixed: the UTC minute,
the UTC day. A refused request is a 429 with ``Retry-After`` (the seconds to the next window) naming the
limit.

Tokens are known only as the engine makes them, so a token limit admits a request while some of the window's
tokens are left, and the request's tokens are spent as they come (``spend``: a streamed answer's events as
they pass, then the rest of the engine's count when it ends). A replica that spends more than it holds goes
into debt, which its next lease pays first; what the cluster can exceed a token limit by is what the requests
in flight when it ran out go on to use.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Awaitable, Callable, Optional

from maas.serve.errors import ProtocolError

WINDOW_S = {"rpm": 60, "requests_per_day": 86_400, "tpm": 60, "tokens_per_day": 86_400}
WORDS = {"rpm": "requests per minute", "requests_per_day": "requests per day", "tpm": "tokens per minute",
         "tokens_per_day": "tokens per day"}
TOKEN_KINDS = frozenset({"tpm", "tokens_per_day"})
SHARE = 20  # a lease is 1/SHARE of the limit: the most a replica can hold unspent is that
NAMESPACE, NAME = "maas-limits", "maas-limiter"
LEASE_TIMEOUT_S = 10.0
DOWN_S = 5  # after a lease timed out, requests that need one are refused at once for this long
UNCHECKED = (f"the API key's limits cannot be checked now (the cluster's limiter did not answer within "
             f"{LEASE_TIMEOUT_S:g} s); try again")


class Limiter:
    """The cluster's counts: ``lease`` grants up to ``want`` of what is left of ``limit`` in ``window``."""

    def __init__(self):
        self.used: dict = {}

    def lease(self, bucket: str, window: int, limit: int, want: int) -> int:
        key = (bucket, window)
        granted = max(0, min(want, limit - self.used.get(key, 0)))
        self.used[key] = self.used.get(key, 0) + granted
        if len(self.used) > 10_000:  # drop windows that have ended
            self.used = {k: v for k, v in self.used.items() if k[1] >= window - 1}
        return granted


def limiter_lease() -> Callable[..., Awaitable[int]]:
    """``lease`` of the cluster's one Limiter actor, made on first use (detached, no CPU, restarted if lost:
    a restarted one starts from zero, so a window in progress may admit up to its limit again). It is placed
    outside the placement group of the replica that makes it (Serve has an engine replica's children join
    its group): it must outlive that replica, and a group removed with its application would leave it
    unschedulable, every lease waiting on it. A lease that takes over ``LEASE_TIMEOUT_S`` is a 503."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Limiter).options(
        name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy="DEFAULT").remote()

    async def lease(bucket: str, window: int, limit: int, want: int) -> int:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(actor.lease.remote(bucket, window, limit, want)
                                                              .future()), LEASE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ProtocolError(503, UNCHECKED, {"retry-after": str(DOWN_S)}) from None

    return lease


class Limits:
    """A replica's side: its leases per (key, limit, window), spent locally; ``lease`` asks for more."""

    def __init__(self, lease: Optional[Callable[..., Awaitable[int]]] = None, clock=time.time):
        self._lease, self._clock = lease, clock
        self._down_until = 0.0  # after a lease timed out, refuse at once until then (DOWN_S)
        self.left: dict = {}
        self._locks: dict = {}

    async def admit(self, caller) -> None:
        """Spend one request of each of the caller's limits.

        Raises:
            ProtocolError: 429 with ``retry-after`` when a limit is spent for this window.
        """
        for kind, limit, bucket in caller.limits:
            await self._take(caller, kind, limit, bucket, 0 if kind in TOKEN_KINDS else 1)

    def spend(self, caller, tokens: int) -> None:
        """Spend ``tokens`` of each of the caller's token limits in the current window (into debt if the
        replica holds fewer: its next lease pays it). No wait: the request is already answered or answering."""
        if tokens <= 0:
            return
        now = self._clock()
        for kind, _, bucket in caller.limits:
            if kind in TOKEN_KINDS:
                key = (bucket, int(now // WINDOW_S[kind]))
                self.left[key] = self.left.get(key, 0) - tokens

    async def _take(self, caller, kind: str, limit: int, bucket: str, cost: int) -> None:
        """Spend ``cost`` (1: a request; 0: a token limit only needs one of its tokens left) or refuse."""
        now = self._clock()
        window = int(now // WINDOW_S[kind])
        key = (bucket, window)
        need = max(cost, 1)
        if self.left.get(key, 0) < need:
            async with self._locks.setdefault(key[0], asyncio.Lock()):  # one lease call at a time per bucket
                left = self.left.get(key, 0)
                if left < need:
                    if self._clock() < self._down_until:  # the limiter did not answer just now: no queue behind it
                        raise ProtocolError(503, UNCHECKED, {"retry-after": str(DOWN_S)})
                    if self._lease is None:
                        self._lease = limiter_lease()
                    want = max(math.ceil(limit / SHARE), need - left)  # a debt is paid first
                    try:
                        granted = await self._lease(key[0], window, limit, want)
                    except ProtocolError:
                        self._down_until = self._clock() + DOWN_S
                        raise
                    self.left = {k: v for k, v in self.left.items() if k[1] >= window or k[0] != key[0]}
                    self.left[key] = self.left.get(key, 0) + granted
        if self.left.get(key, 0) < need:
            wait = max(1, math.ceil((window + 1) * WINDOW_S[kind] - now))
            raise ProtocolError(429, f"API key {caller.name!r} is over its limit of {limit:,} {WORDS[kind]}; "
                                     f"retry after {wait} s", {"retry-after": str(wait)})
        self.left[key] -= cost
