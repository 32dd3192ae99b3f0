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


# How far an attempt got (Progress.stage), in order.
STAGES = ("login", "bootdev", "command")


@dataclass
class Progress:
    """How far a node's operation got, kept current by the driver while it runs.

    What a timeout can honestly report: before ``"command"`` nothing but a
    login (and maybe the boot device) was asked of the BMC; from ``"command"``
    on the operation's own command has gone out and the BMC may have acted
    even if its answer never arrives. ``command_sent`` stays true across the
    attempts of one operation (a retry that is logging in again does not undo
    what an earlier attempt sent).
    """

    stage: str = "login"
    command_sent: bool = False
    # The operation's deadline (trio clock): a driver sends no command after it.
    deadline: float | None = None

    def reached(self, stage: str) -> None:
        self.stage = stage
        if stage == "command":
            self.command_sent = True


class PowerDriver(Protocol):
    """Runs one operation against one BMC. The service guarantees one call per BMC at a time.

    ``attempt`` returns only when the BMC conversation is over (logged out or
    given up), so the service can keep the BMC reserved until then. It moves
    ``progress`` along as the attempt passes each stage (STAGES).
    """

    scheme: str

    async def attempt(
        self, target: PowerTarget, request: PowerRequest, progress: Progress | None = None
    ) -> Attempt: ...
