"""Option negotiation (RFC 2347 OACK, 2348 blksize, 2349 timeout/tsize, 7440 windowsize).

Pure: requested options + what we can do -> what we will use and the OACK to send.

Rules (the reasons are EFI firmware and old PXE ROMs):
- The OACK holds only options the client asked for (RFC 2347 §4): an
  unrequested ``tsize`` makes some UEFI clients abort.
- No acceptable option at all -> no OACK; the transfer starts with DATA 1.
- Values are ASCII decimal; garbage or a value outside the RFC's range is
  refused with ERROR 8 rather than guessed at.
- ``blksize`` is clamped to ``max_blksize`` (the path MTU minus headers);
  ``windowsize`` to ``max_windowsize``; the OACK carries the clamped value
  (RFC 2348 §3 and RFC 7440 §3 allow a smaller answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cwboot.protocol.tftp._wire import BadPacket, ErrorCode

DEFAULT_BLKSIZE = 512  # RFC 1350
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 §2
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349 §2
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440 §3
# 1500-byte Ethernet MTU - 20 (IPv4) - 8 (UDP) - 4 (TFTP DATA header).
ETHERNET_BLKSIZE = 1468


@dataclass(frozen=True)
class Limits:
    """What the server allows; the service builds it from TftpConfig."""

    max_blksize: int = ETHERNET_BLKSIZE
    max_windowsize: int = 64
    # Seconds between retransmissions unless the client negotiates `timeout`.
    timeout: float = 1.0
    # Retransmissions of the same packet/window before giving up.
    retries: int = 5


@dataclass(frozen=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    # Options to put in the OACK, in the client's order; empty = no OACK.
    oack: dict[str, str] = field(default_factory=dict)


def _integer_untrusted(name: str, value: str, low: int, high: int | None) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise BadPacket(f"bad_{name}", ErrorCode.OPTION_REFUSED, f"bad {name} {value[:16]!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise BadPacket(f"bad_{name}", ErrorCode.OPTION_REFUSED, f"{name} {number} out of range")
    return number


def negotiate_untrusted(options: dict[str, str], size: int | None, limits: Limits) -> Negotiated:
    """Decide blksize/windowsize/timeout and the OACK for a read of ``size`` bytes.

    ``size`` None means unknown (netascii, generated streams): ``tsize`` is then
    left out of the OACK, which RFC 2349 allows.
    """
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.timeout
    oack: dict[str, str] = {}
    for name, value in options.items():
        if name == "blksize":
            # Values above 65464 are clamped rather than refused: some clients
            # ask for 65535 meaning "as large as you can".
            blksize = min(
                _integer_untrusted(name, value, MIN_BLKSIZE, None), limits.max_blksize, MAX_BLKSIZE
            )
            oack[name] = str(blksize)
        elif name == "windowsize":
            requested = _integer_untrusted(name, value, MIN_WINDOWSIZE, MAX_WINDOWSIZE)
            windowsize = min(requested, limits.max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout":
            timeout = float(_integer_untrusted(name, value, MIN_TIMEOUT, MAX_TIMEOUT))
            oack[name] = value.lstrip("0") or "0"
        elif name == "tsize":
            # In an RRQ the client sends 0 (RFC 2349 §3); any number is tolerated.
            _integer_untrusted(name, value, 0, None)
            if size is not None:
                oack[name] = str(size)
        # Unknown options are ignored (RFC 2347 §4), so they never reach the OACK.
    return Negotiated(blksize, windowsize, timeout, oack)
