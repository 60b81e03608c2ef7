"""Token buckets for the relay's per-session and global bandwidth limits.

A packet passes when every bucket it is charged to has tokens for its bytes;
otherwise it is dropped (and counted by the caller). Dropping rather than
queueing is what a router does: TCP sees the loss and slows down.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    @classmethod
    def from_mbit(
        cls, mbit: float, *, clock: Callable[[], float] = time.monotonic
    ) -> TokenBucket | None:
        """A bucket for ``mbit`` Mbit/s with a 50 ms burst (at least 64 KiB); None if 0."""
        if mbit <= 0:
            return None
        rate = mbit * 1e6 / 8
        return cls(rate, max(rate * 0.05, 65536.0), clock=clock)

    def take(self, amount: int) -> bool:
        """Spend ``amount`` tokens if available; False (nothing spent) otherwise."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True


def admit(buckets: tuple[TokenBucket, ...], amount: int) -> bool:
    """Charge ``amount`` to every bucket, or to none when one of them is short."""
    if not buckets:
        return True
    now_ok = [bucket.take(amount) for bucket in buckets]
    if all(now_ok):
        return True
    # Refund the buckets that did pay, so a drop costs nobody anything.
    for bucket, paid in zip(buckets, now_ok, strict=True):
        if paid:
            bucket._tokens = min(bucket.burst, bucket._tokens + amount)
    return False
