"""A token bucket for ``--rate``: one in the parent, charged per batch as it is dispatched.

Batches are charged whole and may take the bucket below zero, so the long-run rate is exact
while a burst is at most one batch; under a rate the coordinator keeps batches to about a
tenth of a second of tokens.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 0.1)
        self.tokens = 1.0  # start small: no burst of a whole second at start
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def ready(self, now: float) -> bool:
        """True when at least one job may start now."""
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, count: int, now: float) -> None:
        self._refill(now)
        self.tokens -= count

    def wait(self, now: float) -> float:
        """Seconds until ``ready`` is true."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    @property
    def batch(self) -> int:
        return max(1, int(self.capacity))
