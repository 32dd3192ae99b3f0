"""The token bucket that bounds unknown-MAC enrolments: pure, driven by the ``now`` it is given."""

from __future__ import annotations

import pytest

from cwboot.policy.token_bucket import TokenBucket


def takes(bucket: TokenBucket, now: float, n: int) -> int:
    return sum(bucket.take(now) for _ in range(n))


def test_burst_at_once_then_rate_per_second() -> None:
    # Times and rate chosen so every figure is exact in binary floating point.
    bucket = TokenBucket(rate=8.0, burst=20, now=100.0)
    assert takes(bucket, 100.0, 1000) == 20  # a flood at one instant: the burst only
    assert takes(bucket, 100.5, 1000) == 4  # half a second later: 8/s * 0.5 s
    assert takes(bucket, 100.5625, 1000) == 0  # half a token is no token
    assert takes(bucket, 100.625, 1000) == 1


def test_idle_time_refills_no_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert takes(bucket, 0.0, 3) == 3
    assert takes(bucket, 3600.0, 100) == 3


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=50.0)
    assert bucket.take(50.0) and not bucket.take(10.0) and not bucket.take(50.5)
    assert bucket.take(51.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst, now=0.0)
