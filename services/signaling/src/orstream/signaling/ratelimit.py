"""Per-caller token buckets: a burst of requests, then a steady rate, then ``429 Retry-After``.

Each WHEP offer costs the edge a DTLS certificate, an ICE agent and a peer connection before it
is answered, so one caller (an identity, or a client address without a valid token) must not be
able to spend them all. Memory stays bounded: a bucket idle long enough to be full again is the
same as no bucket and is forgotten; beyond ``max_keys`` the least recently used goes first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_KEYS = 10_000


class RateLimiter:
    """``check(key)`` spends one token of ``key``'s bucket: ``None`` if allowed, else the
    seconds until a token will be there (for ``Retry-After``)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_keys >= 1 are required")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        #: key -> (tokens left, when they were counted); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._full_after_s = burst / rate_per_s

    def check(self, key: str) -> float | None:
        now = self._clock()
        self._forget_idle(now)
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            refused = None
        else:
            self._buckets[key] = (tokens, now)
            refused = (1.0 - tokens) / self.rate_per_s
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return refused

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        while self._buckets:
            key, (_, then) = next(iter(self._buckets.items()))
            if now - then < self._full_after_s:
                break
            del self._buckets[key]
