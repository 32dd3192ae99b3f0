"""Golden tests: real captured requests, decoded to text and compared with checked-in expectations.

Captures (tests/protocol/golden/*.bin, made by the two capture scripts there):

- ``udhcpc-*``, ``dhclient-*``, ``perfdhcp-*``: busybox udhcpc 1.35, ISC dhclient
  4.4.3-P1 and Kea perfdhcp 2.2 on a veth in a network namespace
  (capture_clients.py);
- ``ipxe-bios-*``, ``ipxe-uefi-*``, ``uefi-pxe-*``: QEMU 7.2 (TCG) guests with
  SeaBIOS + Debian's iPXE ROM, OVMF + iPXE's EFI ROM, and OVMF's own PXE/HTTP
  boot with no option ROM: its PXE DISCOVER (``uefi-pxe-0``) and, after that timed
  out, its UEFI HTTP boot DISCOVER (``uefi-pxe-1``, ``HTTPClient:Arch:00016``)
  (capture_qemu.py).

Each capture is decoded by both codecs (must be equal), then answered by the
boot policy with both codecs building the reply (must be byte-identical); the
text rendering of request and reply is compared with ``<name>.txt``. Set
``CWBOOT_REGEN_GOLDEN=1`` to rewrite the expectations after a deliberate change.

The node table gives the capture's MAC the index whose pool address is the one a
REQUEST asks for (option 50, or ciaddr), so every captured REQUEST gets its ACK.
Two variants on purpose: ``udhcpc-request-nak`` (the node sits at index 0, so the
REQUEST names another address: NAK, RFC 2131 4.3.2) and ``ipxe-bios-0-proxy``
(the iPXE DISCOVER answered in proxyDHCP mode).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from cwboot.control.objects import validate_new
from cwboot.policy.dhcp import BootPolicy, Reply
from cwboot.policy.node_table import NodeTable
from cwboot.protocol.dhcp import DhcpPacket, _wire_py
from tests.protocol.dhcp_helpers import cython_codec

_wire_c = cython_codec()

GOLDEN = Path(__file__).resolve().parent / "golden"
CAPTURES = sorted(GOLDEN.glob("*.bin"))


def render(pkt: DhcpPacket) -> str:
    def ip(b: bytes) -> str:
        return ".".join(str(x) for x in b)

    lines = [
        f"op {pkt.op} htype {pkt.htype} hlen {pkt.hlen} hops {pkt.hops} xid {pkt.xid:#010x} secs {pkt.secs} flags {pkt.flags:#06x}",
        f"ciaddr {ip(pkt.ciaddr)} yiaddr {ip(pkt.yiaddr)} siaddr {ip(pkt.siaddr)} giaddr {ip(pkt.giaddr)}",
        f"chaddr {pkt.chaddr.hex()} mac {pkt.mac}",
        f"sname {pkt.sname.rstrip(bytes(1))!r} file {pkt.file.rstrip(bytes(1))!r}",
        f"message_type {pkt.message_type}",
    ]
    for code, value in pkt.options.items():
        text = f" {value!r}" if value and all(32 <= c < 127 for c in value) else ""
        lines.append(f"option {code:3d} len {len(value):3d} {value.hex()}{text}")
    return "\n".join(lines)


POOL_NETWORK = ipaddress.IPv4Network("10.99.0.0/16")
IP_OFFSET = 1000


def table(request: DhcpPacket, *, seeded: bool = True) -> NodeTable:
    """The request's MAC as node ``n<i>``; seeded: ``i`` is where the requested address is."""
    index = 0
    requested = request.options.get(50) or request.ciaddr
    if seeded and requested != bytes(4):
        index = int(ipaddress.IPv4Address(requested)) - int(POOL_NETWORK.network_address) - IP_OFFSET
        assert index >= 0, f"{request.mac} asks for {ipaddress.IPv4Address(requested)}: not in the pool"
    pool = validate_new(
        "naming_pool", {"name": "default", "network": str(POOL_NETWORK), "ip_offset": IP_OFFSET}, 0.0
    )
    node = {**validate_new("node", {"index": index, "mac": [request.mac]}, 0.0), "name": f"n{index}"}
    return NodeTable([node], [pool])


# (capture, variant): "" = as captured, "nak" = node table not seeded, "proxy" = proxyDHCP mode.
CASES = [(p, "") for p in CAPTURES] + [
    (GOLDEN / "udhcpc-request.bin", "nak"),
    (GOLDEN / "ipxe-bios-0.bin", "proxy"),
]


def test_every_kind_of_client_was_captured() -> None:
    names = {p.name.rsplit("-", 1)[0] for p in CAPTURES}
    assert {"udhcpc", "dhclient", "perfdhcp"} <= names
    assert {"ipxe-bios", "ipxe-uefi", "uefi-pxe"} <= names


@pytest.mark.parametrize(
    ("capture", "variant"), CASES, ids=[f"{p.stem}-{v}" if v else p.stem for p, v in CASES]
)
def test_golden_capture(capture: Path, variant: str) -> None:
    data = capture.read_bytes()
    request = _wire_py.parse_untrusted(data)
    assert _wire_c.parse_untrusted(data) == request
    mode = "proxy" if variant == "proxy" else "authoritative"
    policy = BootPolicy(mode=mode, head_address="10.99.0.1", http_port=8081, router="10.99.0.1")
    decision = policy.decide(request, table(request, seeded=variant != "nak"))
    assert isinstance(decision, Reply), decision
    args = (request, decision.message_type, decision.ciaddr, decision.yiaddr, decision.siaddr,
            decision.sname, decision.file, decision.options)  # fmt: skip
    reply = _wire_py.build_reply(*args)
    assert _wire_c.build_reply(*args) == reply
    text = f"# request\n{render(request)}\n# reply\n{render(_wire_c.parse_untrusted(reply))}\n"
    if decision.warnings:
        text += f"# warnings {' '.join(decision.warnings)}\n"
    expected = capture.with_name(f"{capture.stem}-{variant}.txt" if variant else f"{capture.stem}.txt")
    if os.environ.get("CWBOOT_REGEN_GOLDEN") == "1":
        expected.write_text(text)
    assert expected.exists(), (
        f"no expectation {expected.name}: run with CWBOOT_REGEN_GOLDEN=1 and review it"
    )
    assert text == expected.read_text()
