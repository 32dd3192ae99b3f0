"""TFTP packets on the wire (RFC 1350 §5, RFC 2347 §2): parse and build, nothing else.

Every parser of network bytes is named ``*_untrusted`` and raises only
:class:`BadPacket`, which says whether the peer deserves an ERROR packet
(``code``) or a silent drop (``code is None``) and why (``reason``, the key of
the drop/error counter).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

# Every packet starts with a 2-byte big-endian opcode (RFC 1350 §5).
OPCODE = struct.Struct("!H")
# DATA and ACK: opcode, 16-bit block number (RFC 1350 §5, figure 5-2/5-3).
OPCODE_BLOCK = struct.Struct("!HH")
# ERROR: opcode, 16-bit error code, then a NUL-terminated message (RFC 1350 §5).
OPCODE_ERRCODE = struct.Struct("!HH")

# RFC 2347 §2: "the total length of the request packet must not exceed 512
# octets". Firmware keeps to it; we allow some slack for sloppy clients but
# refuse anything larger (a 64 KiB file name never reaches the path code).
MAX_REQUEST_BYTES = 1024
MAX_OPTIONS = 16


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6  # RFC 2347


class ErrorCode(enum.IntEnum):
    """RFC 1350 appendix, plus 8 from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class BadPacket(Exception):
    """A datagram we will not act on.

    ``code`` is the ERROR code to answer with, or None to drop silently;
    ``reason`` is a short stable key for the counters.
    """

    def __init__(self, reason: str, code: ErrorCode | None = None, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.code = code
        self.message = message or reason.replace("_", " ")


@dataclass(frozen=True)
class ReadRequest:
    """An RRQ. ``options`` has lower-cased names (RFC 2347: case-insensitive)."""

    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: dict[str, str]


Packet = ReadRequest | Data | Ack | Error | OptionAck


def _split_strings_untrusted(body: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings; the body must end with a NUL."""
    if not body.endswith(b"\0"):
        raise BadPacket(f"{what}_unterminated", ErrorCode.ILLEGAL_OPERATION)
    return body[:-1].split(b"\0")


def _ascii_untrusted(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadPacket(f"{what}_not_ascii", ErrorCode.ILLEGAL_OPERATION) from None


def _options_untrusted(parts: list[bytes], what: str) -> dict[str, str]:
    if len(parts) % 2:
        raise BadPacket(f"{what}_option_without_value", ErrorCode.ILLEGAL_OPERATION)
    if len(parts) // 2 > MAX_OPTIONS:
        raise BadPacket(f"{what}_too_many_options", ErrorCode.ILLEGAL_OPERATION)
    options: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        name = _ascii_untrusted(parts[i], what).lower()
        if not name:
            raise BadPacket(f"{what}_empty_option_name", ErrorCode.ILLEGAL_OPERATION)
        if name in options:
            raise BadPacket(f"{what}_duplicate_option", ErrorCode.ILLEGAL_OPERATION)
        options[name] = _ascii_untrusted(parts[i + 1], what)
    return options


def parse_request_untrusted(datagram: bytes) -> ReadRequest:
    """Parse what arrives on the listening port: only an RRQ is acceptable.

    WRQ is refused (this server is read-only); anything else gets ERROR 4, and
    datagrams too short to hold an opcode are dropped.
    """
    if len(datagram) < OPCODE.size:
        raise BadPacket("short_datagram")
    if len(datagram) > MAX_REQUEST_BYTES:
        raise BadPacket("request_too_long", ErrorCode.ILLEGAL_OPERATION, "request too long")
    (opcode,) = OPCODE.unpack_from(datagram)
    if opcode == Opcode.WRQ:
        raise BadPacket("write_refused", ErrorCode.ACCESS_VIOLATION, "read-only server")
    if opcode != Opcode.RRQ:
        raise BadPacket("not_a_request", ErrorCode.ILLEGAL_OPERATION, "expected a read request")
    parts = _split_strings_untrusted(datagram[OPCODE.size :], "request")
    if len(parts) < 2:
        raise BadPacket("request_without_mode", ErrorCode.ILLEGAL_OPERATION)
    # The file name is kept as bytes-as-latin-1 so the path checks see every
    # byte the peer sent (control characters, backslashes...).
    filename = parts[0].decode("latin-1")
    mode = _ascii_untrusted(parts[1], "request").lower()
    if mode not in ("octet", "netascii"):
        raise BadPacket("bad_mode", ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {mode!r}")
    return ReadRequest(filename, mode, _options_untrusted(parts[2:], "request"))


def parse_packet_untrusted(datagram: bytes) -> Packet:
    """Parse any TFTP packet (what arrives on a transfer's own port)."""
    if len(datagram) < OPCODE.size:
        raise BadPacket("short_datagram")
    (opcode,) = OPCODE.unpack_from(datagram)
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return parse_request_untrusted(datagram)
    if opcode == Opcode.DATA:
        if len(datagram) < OPCODE_BLOCK.size:
            raise BadPacket("short_data")
        _, block = OPCODE_BLOCK.unpack_from(datagram)
        return Data(block, datagram[OPCODE_BLOCK.size :])
    if opcode == Opcode.ACK:
        if len(datagram) < OPCODE_BLOCK.size:
            raise BadPacket("short_ack")
        _, block = OPCODE_BLOCK.unpack_from(datagram)
        return Ack(block)
    if opcode == Opcode.ERROR:
        if len(datagram) < OPCODE_ERRCODE.size:
            raise BadPacket("short_error")
        _, code = OPCODE_ERRCODE.unpack_from(datagram)
        # Peers often forget the trailing NUL; the message is informative only.
        message = datagram[OPCODE_ERRCODE.size :].split(b"\0", 1)[0]
        return Error(code, message.decode("ascii", "replace"))
    if opcode == Opcode.OACK:
        parts = _split_strings_untrusted(datagram[OPCODE.size :], "oack")
        return OptionAck(_options_untrusted(parts if parts != [b""] else [], "oack"))
    raise BadPacket("unknown_opcode", ErrorCode.ILLEGAL_OPERATION)


def build_request(
    filename: str, mode: str = "octet", options: dict[str, str] | None = None
) -> bytes:
    fields = [filename.encode("latin-1"), mode.encode("ascii")]
    for name, value in (options or {}).items():
        fields += [name.encode("ascii"), value.encode("ascii")]
    return OPCODE.pack(Opcode.RRQ) + b"".join(f + b"\0" for f in fields)


def build_data(block: int, payload: bytes) -> bytes:
    return OPCODE_BLOCK.pack(Opcode.DATA, block & 0xFFFF) + payload


def build_ack(block: int) -> bytes:
    return OPCODE_BLOCK.pack(Opcode.ACK, block & 0xFFFF)


def build_error(code: int, message: str) -> bytes:
    return OPCODE_ERRCODE.pack(Opcode.ERROR, code) + message.encode("ascii", "replace") + b"\0"


def build_oack(options: dict[str, str]) -> bytes:
    body = b"".join(
        n.encode("ascii") + b"\0" + v.encode("ascii") + b"\0" for n, v in options.items()
    )
    return OPCODE.pack(Opcode.OACK) + body
