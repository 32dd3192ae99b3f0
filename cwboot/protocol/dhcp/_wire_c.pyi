"""Types of the Cython codec built from ext/dhcp_wire.pyx (same API as _wire_py)."""

from collections.abc import Callable, Iterable

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
