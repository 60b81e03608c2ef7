"""Token buckets behind the relay's bandwidth limits."""

from __future__ import annotations

import pytest

from relay.ratelimit import TokenBucket, admit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000.0, 1500.0, clock=clock)
    assert bucket.take(1500)
    assert not bucket.take(1)
    clock.now = 0.5  # 500 bytes refilled
    assert bucket.take(500)
    assert not bucket.take(1)
    clock.now = 100.0  # refill never exceeds the burst
    assert bucket.take(1500)
    assert not bucket.take(1)


def test_from_mbit() -> None:
    assert TokenBucket.from_mbit(0) is None
    bucket = TokenBucket.from_mbit(8.0)
    assert bucket is not None and bucket.rate == 1e6 and bucket.burst == 65536.0


def test_admit_charges_all_or_none() -> None:
    clock = FakeClock()
    session = TokenBucket(100.0, 1000.0, clock=clock)
    shared = TokenBucket(100.0, 300.0, clock=clock)
    assert admit((session, shared), 300)
    # The shared bucket is empty: the packet is refused and the session is not charged.
    assert not admit((session, shared), 200)
    assert session.take(700)
    assert admit((), 10**9)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 10)
