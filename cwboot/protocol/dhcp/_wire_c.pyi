"""Types of the Cython codec built from ext/dhcp_wire.pyx (same API as _wire_py)."""

from collections.abc import Iterable

from cwboot.protocol.dhcp._spec import DhcpPacket

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
