"""The injected clock, the time it tells as stored (L{utcnow}), and rate limits on it.

L{LeakyBucket} is the leaky bucket as a meter (like Synapse's Ratelimiter):
each key has a bucket holding at most C{burst} requests that drains at
C{rate} per second; a request that would overflow it is refused and not
counted.  So a key may send C{burst} requests at once, then C{rate} per
second for ever.  Buckets that have drained empty are forgotten.

Shared by the API and SIP front ends; failed logins are counted by L{mizud.security.lockout}.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Hashable, Protocol


class Clock(Protocol):
    """Anything with C{seconds()}: the reactor, or task.Clock in tests."""

    def seconds(self) -> float:
        """Seconds since the epoch."""


def utcnow(clock: Clock) -> datetime:
    """The clock's time as naive UTC, as every timestamp column holds it (the one place this is computed)."""
    return datetime.fromtimestamp(clock.seconds(), timezone.utc).replace(tzinfo=None)


class LeakyBucket:
    """Allow C{burst} requests at once and C{rate} per second after that."""

    def __init__(self, clock: Clock, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._level: dict[Hashable, tuple[float, float]] = {}

    def allow(self, key: Hashable) -> bool:
        """Count one request for C{key}; False if it is over the limit."""
        if self.rate <= 0:
            return True
        now = self.clock.seconds()
        level, when = self._level.get(key, (0.0, now))
        level = max(0.0, level - (now - when) * self.rate)
        if level + 1 > self.burst:
            self._level[key] = (level, now)
            return False
        self._level[key] = (level + 1, now)
        if len(self._level) > self.max_keys:
            self._forget_drained(now)
        return True

    def _forget_drained(self, now: float) -> None:
        for key, (level, when) in list(self._level.items()):
            if level - (now - when) * self.rate <= 0:
                del self._level[key]
        if len(self._level) > self.max_keys:
            # Still too many live keys (a flood from many sources): keep the
            # fullest half, which are the ones being limited.
            keep = sorted(self._level.items(), key=lambda item: item[1][0], reverse=True)[: self.max_keys // 2]
            self._level = dict(keep)
