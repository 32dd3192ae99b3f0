"""Types of cwboot.protocol.dhcp, whichever backend (Cython or pure Python) is loaded."""

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Literal

from cwboot.protocol.dhcp import _spec as spec
from cwboot.protocol.dhcp._spec import BadPacket as BadPacket
from cwboot.protocol.dhcp._spec import DhcpPacket as DhcpPacket

__all__ = [
    "BadPacket",
    "DhcpPacket",
    "FastResponder",
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


class FastResponder:
    """The respond fast path (rules in cwboot.protocol.dhcp._spec)."""

    server_id: bytes
    max_entries: int
    entries: dict[bytes, object]
    def __init__(
        self,
        server_id: bytes,
        check: Callable[[object], bool],
        source: object = None,
        max_entries: int = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    def clear(self) -> None: ...
    def add(
        self,
        key: bytes,
        offer: bytes,
        end: int,
        yiaddr: bytes,
        echo_uuid: bool,
        owner: object,
        checked: object,
    ) -> None: ...
    def respond(self, data: bytes) -> tuple[bytes, tuple[str, int]] | None: ...
