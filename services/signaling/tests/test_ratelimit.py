"""Token buckets on an injected clock: a burst, then refusals that say when to retry, refills,
independent callers, and memory that stays bounded."""

from __future__ import annotations

import pytest

from orstream.signaling.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_retry_after_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.check("alice") for _ in range(3)] == [None, None, None]
    assert limiter.check("alice") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.check("alice") == pytest.approx(0.25), "a refusal spends nothing"
    clock.now += 0.25
    assert limiter.check("alice") is None
    assert limiter.check("alice") == pytest.approx(0.5)
    clock.now += 10  # refills to the burst, never beyond
    assert [limiter.check("alice") for _ in range(4)][-2:] == [None, pytest.approx(0.5)]


def test_callers_have_their_own_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    assert limiter.check("alice") is None
    assert limiter.check("alice") == pytest.approx(1.0)
    assert limiter.check("10.0.0.7") is None


def test_idle_callers_are_forgotten_and_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=1.0, burst=2, max_keys=100, clock=clock)
    for i in range(100):
        limiter.check(f"client-{i}")
    assert len(limiter) == 100
    for i in range(1000):  # a flood of fresh addresses
        limiter.check(f"flood-{i}")
    assert len(limiter) == 100
    clock.now += 2  # burst / rate: every bucket is full again, i.e. no different from none
    limiter.check("late")
    assert len(limiter) == 1


def test_least_recently_used_goes_first_when_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.1, burst=1, max_keys=2, clock=clock)
    assert limiter.check("a") is None and limiter.check("b") is None
    assert limiter.check("a") is not None  # a is now the most recently used
    limiter.check("c")  # evicts b, not a
    assert limiter.check("a") is not None
    assert limiter.check("b") is None


@pytest.mark.parametrize(("rate", "burst", "keys"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int, keys: int) -> None:
    with pytest.raises(ValueError, match="required"):
        RateLimiter(rate, burst, keys)
