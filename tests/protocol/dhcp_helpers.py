"""Packet construction for the DHCP tests: requests as clients send them, options as (code, value)."""

from __future__ import annotations

import importlib
import os
import struct
from types import ModuleType

import pytest

from cwboot.protocol.dhcp import _spec


def cython_codec() -> ModuleType:
    """The Cython codec; its absence fails the tests unless CWBOOT_DHCP_BACKEND=python says it is meant."""
    try:
        return importlib.import_module("cwboot.protocol.dhcp._wire_c")
    except ImportError:
        if os.environ.get("CWBOOT_DHCP_BACKEND") == "python":
            pytest.skip(
                "pure-Python build (CWBOOT_DHCP_BACKEND=python): no Cython codec to compare"
            )
        raise


def request_bytes(
    *,
    mac: str = "52:54:00:12:34:56",
    xid: int = 0x12345678,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    hops: int = 0,
    op: int = 1,
    sname: bytes = b"",
    file: bytes = b"",
    options: list[tuple[int, bytes]] | bytes = (),  # type: ignore[assignment]
    cookie: int = _spec.MAGIC_COOKIE,
    end: bool = True,
) -> bytes:
    """A BOOTREQUEST; ``options`` as pairs (encoded, then END) or as raw bytes (used verbatim)."""
    chaddr = bytes.fromhex(mac.replace(":", ""))
    header = _spec.HEADER.pack(
        op, 1, len(chaddr), hops, xid, 0, flags, _ip(ciaddr), bytes(4), bytes(4), _ip(giaddr),
        chaddr, sname, file, cookie,
    )  # fmt: skip
    if isinstance(options, bytes):
        return header + options
    body = b"".join(bytes((c, len(v))) + v for c, v in options)
    return header + body + (b"\xff" if end else b"")


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def discover(mac: str = "52:54:00:12:34:56", *extra: tuple[int, bytes], **kw: object) -> bytes:
    return request_bytes(mac=mac, options=[(53, b"\x01"), *extra], **kw)  # type: ignore[arg-type]


def pxe_options(arch: int = 0) -> list[tuple[int, bytes]]:
    """The option set a PXE 2.1 ROM sends (PXE spec 2.1 section 2.2; RFC 4578)."""
    return [
        (57, struct.pack("!H", 1260)),
        (93, struct.pack("!H", arch)),
        (94, b"\x01\x02\x01"),
        (97, b"\x00" + bytes(range(16))),
        (60, f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()),
    ]


def reply_options(reply: bytes) -> dict[int, bytes]:
    """Options of a reply we built (through the pure-Python codec, the reference)."""
    from cwboot.protocol.dhcp import _wire_py

    return _wire_py.parse_untrusted(reply).options
