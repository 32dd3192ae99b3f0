"""What a power operation is: the request, the BMC it goes to, and its per-node result.

Operations (``OPS``):

    status   read the chassis power state
    on       power on                      (chassis control 1)
    off      power off at once             (chassis control 0)
    soft     ask the OS to shut down (ACPI) (chassis control 5)
    cycle    off then on; a node that is off is powered on (chassis control 2)
    reset    hard reset; a node that is off is powered on  (chassis control 3)
    bootdev  set the next boot device: pxe or disk, for the next boot only or persistent

``on``, ``cycle`` and ``reset`` may carry a boot device too: it is set in the
same IPMI session right before the power command (a storm power-on is "login,
bootdev pxe, on, logout").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

OPS = ("status", "on", "off", "soft", "cycle", "reset", "bootdev")
# Operations that start a node booting: shaped into waves (PowerConfig.wave_rate).
BOOTING_OPS = frozenset({"on", "cycle", "reset"})
BOOT_DEVICES = ("pxe", "disk")

_URI = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?:(?P<user>[^@/\s]*)@)?(?P<host>\[[^\]]+\]|[^:/\s]+)(?::(?P<port>\d+))?$"
)
DEFAULT_PORTS = {"ipmi": 623}


class PowerError(ValueError):
    """A power request or a node's power settings are invalid; the message says which."""


@dataclass(frozen=True)
class PowerRequest:
    op: str
    # "pxe" / "disk" for bootdev (required) and on/cycle/reset (optional).
    bootdev: str = ""
    # Boot device for every following boot, not just the next one.
    persistent: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise PowerError(
                f"unknown power operation {self.op!r}: expected one of {', '.join(OPS)}"
            )
        if self.bootdev and self.bootdev not in BOOT_DEVICES:
            raise PowerError(
                f"unknown boot device {self.bootdev!r}: expected one of {', '.join(BOOT_DEVICES)}"
            )
        if self.op == "bootdev" and not self.bootdev:
            raise PowerError("bootdev needs a device: pxe or disk")
        if self.bootdev and self.op not in ("bootdev", *BOOTING_OPS):
            raise PowerError(f"a boot device cannot go with {self.op!r}")

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "bootdev": self.bootdev, "persistent": self.persistent}


@dataclass(frozen=True)
class PowerTarget:
    """One node's BMC. The password never appears in repr() or to_json()."""

    node: str
    scheme: str
    host: str
    port: int
    user: str
    password: str = field(repr=False, default="")

    @property
    def bmc(self) -> str:
        """The BMC's address: what the one-operation-at-a-time rule is keyed on."""
        return f"{self.host}:{self.port}"


def parse_power_uri(uri: str) -> tuple[str, str, str, int]:
    """``ipmi://user@host:port`` -> (scheme, user, host, port); the port defaults per scheme."""
    m = _URI.match(uri or "")
    if m is None:
        raise PowerError(f"power_uri {uri!r} is not like ipmi://user@bmc-host:623")
    scheme = m["scheme"]
    port = int(m["port"]) if m["port"] else DEFAULT_PORTS.get(scheme, 0)
    if not 0 < port < 65536:
        raise PowerError(f"power_uri {uri!r}: no valid port")
    return scheme, m["user"] or "", m["host"].strip("[]"), port


def target_for(node: dict[str, Any]) -> PowerTarget:
    """The PowerTarget of a stored node document (with its secret ``power_password``)."""
    name = node.get("name", "?")
    if not node.get("power_uri"):
        raise PowerError(f"node {name} has no power_uri")
    scheme, user, host, port = parse_power_uri(node["power_uri"])
    return PowerTarget(name, scheme, host, port, user, node.get("power_password", ""))


@dataclass
class PowerResult:
    """One node's outcome. ``state`` is "on"/"off" when known; ``error`` says why it failed.

    ``command_sent`` on a failure: the operation's command went out before it
    failed (no answer, timed out), so the BMC may have acted anyway; read the
    power state before trying again. In JSON only when true on a failure.
    """

    node: str
    op: str
    ok: bool
    state: str = ""
    error: str = ""
    # Attempts made (1 + retries used) and seconds from start to result.
    attempts: int = 0
    elapsed: float = 0.0
    bootdev: str = ""
    command_sent: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "op": self.op, "ok": self.ok}
        if self.state:
            out["state"] = self.state
        if self.bootdev:
            out["bootdev"] = self.bootdev
        if self.error:
            out["error"] = self.error
        if self.command_sent and not self.ok:
            out["command_sent"] = True
        out["attempts"] = self.attempts
        out["elapsed"] = round(self.elapsed, 3)
        return out
