"""Types of cwboot.protocol.dhcp, whichever backend (Cython or pure Python) is loaded."""

from collections.abc import Iterable
from types import ModuleType
from typing import Literal

from cwboot.protocol.dhcp import _spec as spec
from cwboot.protocol.dhcp._spec import BadPacket as BadPacket
from cwboot.protocol.dhcp._spec import DhcpPacket as DhcpPacket

__all__ = [
    "BadPacket",
    "DhcpPacket",
    "backend",
    "build_reply",
    "encode_options",
    "load_backend",
    "parse_untrusted",
    "spec",
]

BACKENDS: tuple[str, ...]
backend: Literal["cython", "python"]

def load_backend(choice: str) -> tuple[str, ModuleType]: ...
def parse_untrusted(data: bytes) -> DhcpPacket: ...
def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes: ...
def build_reply(
    request: DhcpPacket,
    message_type: int,
    ciaddr: bytes,
    yiaddr: bytes,
    siaddr: bytes,
    sname: bytes,
    file: bytes,
    options: Iterable[tuple[int, bytes]],
) -> bytes: ...
