"""A token bucket: at most ``burst`` at once, refilled at ``rate`` per second. Pure: ``now`` is passed in.

Used by the DHCP service to bound unknown-MAC enrolments (``dhcp.enrol_rate`` and
``dhcp.enrol_burst``): every MAC on the wire can ask, spoofed ones included, and
each enrolment writes a store object.
"""

from __future__ import annotations


class TokenBucket:
    """``take(now)`` is True while a token is left; tokens come back at ``rate`` per second."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate: expected > 0 per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst: expected >= 1, got {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)  # starts full
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; a clock that goes backwards refills nothing."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
