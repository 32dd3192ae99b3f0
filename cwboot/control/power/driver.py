"""The interface every power driver implements, chosen per node by its power_uri scheme."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cwboot.control.power.request import PowerRequest, PowerTarget


@dataclass(frozen=True)
class Attempt:
    """The outcome of one try of one operation on one BMC (one session: login ... logout)."""

    ok: bool
    state: str = ""
    bootdev: str = ""
    error: str = ""
    # Whether another try might succeed (BMC busy, session lost), as opposed to wrong password.
    retryable: bool = False


class PowerDriver(Protocol):
    """Runs one operation against one BMC. The service guarantees one call per BMC at a time.

    ``attempt`` returns only when the BMC conversation is over (logged out or
    given up), so the service can keep the BMC reserved until then.
    """

    scheme: str

    async def attempt(self, target: PowerTarget, request: PowerRequest) -> Attempt: ...
