"""The DHCP side of a simulated node: requests as PXE firmware and iPXE send them, through one relay socket.

Wire format: cwboot.protocol.dhcp (the header layout ``spec.HEADER``,
``encode_options`` and ``parse_untrusted``), the same codec the server uses.

Why a relay: on loopback one process cannot receive a broadcast reply per
simulated node (every node would need port 68 on its own interface). So the
swarm acts as a DHCP relay agent (RFC 2131 4.1, RFC 1542): requests carry
``giaddr`` = the swarm's own address and ``hops`` = 1, and servers answer the
relay on its bound port (the server's port: 67 in production, the configured
alternate port in tests — dnsmasq's ``--dhcp-alternate-port`` does the same).
One socket serves every node; replies are matched to nodes by ``xid``.

What each phase sends (captured from real firmware):

* PXE ROM: option 60 ``PXEClient:Arch:00000:UNDI:002001``, 93 = architecture,
  94 = UNDI 2.1, 97 = type 0 + 16-byte GUID, 55 = the PXE parameter list,
  57 = max message size.
* iPXE: option 77 ``iPXE`` (raw, as iPXE sends it), 60
  ``PXEClient:Arch:00000:UNDI:002001``, 175 = iPXE feature flags, plus 93/94/97.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

import trio

from cwboot.protocol import dhcp
from cwboot.protocol.dhcp import BadPacket, DhcpPacket

spec = dhcp.spec

# Architecture types of RFC 4578 2.1 / IANA "Processor Architecture Types".
ARCH_BIOS = 0
ARCH_EFI_X64 = 7
ARCH_EFI_ARM64 = 11

PXE_PARAMS = bytes((1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50,
                    51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135))  # fmt: skip
IPXE_PARAMS = bytes((1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 175, 203))
# iPXE's encapsulated 175: feature flags as iPXE 1.21 sends them (HTTP, DNS, TFTP, PXE ext, bzImage, ...).
IPXE_FEATURES = bytes((0xB1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0E, 0xEB, 0x03, 0x01, 0x00, 0x00,
                       0x17, 0x01, 0x01, 0x13, 0x01, 0x01, 0x11, 0x01, 0x01, 0x27, 0x01, 0x01,
                       0x15, 0x01, 0x01, 0x10, 0x01, 0x01))  # fmt: skip


class DhcpFailed(Exception):
    """No usable answer (NAK, or no reply after every retry)."""


@dataclass(frozen=True)
class Lease:
    """What the DORA gave a node: address, server, and the boot file for the next phase."""

    address: str
    server_id: str
    next_server: str
    boot_file: str


def build_request_packet(
    message_type: int,
    mac: bytes,
    xid: int,
    giaddr: bytes,
    options: list[tuple[int, bytes]],
    *,
    secs: int = 0,
) -> bytes:
    """A BOOTREQUEST as a relay forwards it (hops 1, giaddr set), options after 53, then END."""
    header = spec.HEADER.pack(
        spec.BOOTREQUEST, 1, len(mac), 1, xid, secs, 0, bytes(4), bytes(4), bytes(4), giaddr,
        mac.ljust(spec.CHADDR_LEN, b"\0"), bytes(spec.SNAME_LEN), bytes(spec.FILE_LEN),
        spec.MAGIC_COOKIE,
    )  # fmt: skip
    body = dhcp.encode_options([(spec.OPT_MESSAGE_TYPE, bytes((message_type,))), *options])
    return header + body + bytes((spec.OPT_END,))


def firmware_options(phase: str, mac: bytes, arch: int) -> list[tuple[int, bytes]]:
    """The options PXE firmware (``phase="pxe"``) or iPXE (``"ipxe"``) puts in every request."""
    guid = (b"\x00" + b"cwbootsim" + mac + b"\x00")[:17]
    common = [
        (spec.OPT_MAX_SIZE, struct.pack("!H", 1472)),
        (spec.OPT_CLIENT_ARCH, struct.pack("!H", arch)),
        (spec.OPT_CLIENT_NDI, bytes((1, 2, 1))),
        (spec.OPT_CLIENT_UUID, guid),
    ]
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode()
    if phase == "pxe":
        return [(spec.OPT_PARAM_LIST, PXE_PARAMS), *common, (spec.OPT_VENDOR_CLASS, vendor)]
    return [
        (spec.OPT_PARAM_LIST, IPXE_PARAMS),
        *common,
        (spec.OPT_VENDOR_CLASS, vendor),
        (spec.OPT_USER_CLASS, b"iPXE"),
        (spec.OPT_IPXE, IPXE_FEATURES),
    ]


def lease_from(reply: DhcpPacket) -> Lease:
    """Address, server id, next-server and boot file (option 67 wins over the ``file`` field)."""
    server_id = reply.options.get(spec.OPT_SERVER_ID, b"")
    boot = reply.options.get(spec.OPT_BOOTFILE) or reply.file
    return Lease(
        address=socket.inet_ntoa(reply.yiaddr),
        server_id=socket.inet_ntoa(server_id) if len(server_id) == 4 else "",
        next_server=socket.inet_ntoa(reply.siaddr),
        boot_file=boot.split(b"\0", 1)[0].decode("latin-1"),
    )


class RelaySocket:
    """One UDP socket for every simulated node's DHCP; replies dispatched to waiters by xid.

    ``drops`` counts what arrived and could not be used, by reason.
    """

    def __init__(self, sock: socket.socket, giaddr: str, server: tuple[str, int]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.giaddr = ipaddress.IPv4Address(giaddr).packed
        self.server = server
        self._waiters: dict[int, trio.MemorySendChannel[DhcpPacket]] = {}
        self.drops: dict[str, int] = {}
        self.sent = 0
        self.received = 0

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    async def run(self) -> None:
        """Receive forever, draining every queued reply per wake-up (a storm's OFFERs come in bursts)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            while True:
                try:
                    data = self.sock.recv(4096)
                except BlockingIOError:
                    break
                self.received += 1
                self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        try:
            packet = dhcp.parse_untrusted(data)
        except BadPacket:
            self._drop("bad_packet")
            return
        if packet.op != spec.BOOTREPLY:
            self._drop("not_a_reply")
            return
        send = self._waiters.get(packet.xid)
        if send is None:
            self._drop("unknown_xid")
            return
        try:
            send.send_nowait(packet)
        except trio.WouldBlock:
            self._drop("waiter_full")

    def register(self, xid: int) -> trio.MemoryReceiveChannel[DhcpPacket]:
        send, receive = trio.open_memory_channel[DhcpPacket](8)
        self._waiters[xid] = send
        return receive

    def unregister(self, xid: int) -> None:
        self._waiters.pop(xid, None)

    async def send(self, packet: bytes) -> None:
        self.sent += 1
        while True:
            try:
                self.sock.sendto(packet, self.server)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)


async def exchange(
    relay: RelaySocket,
    mac: bytes,
    xid: int,
    message_type: int,
    options: list[tuple[int, bytes]],
    want: tuple[int, ...],
    timeouts: list[float],
    started: float,
) -> DhcpPacket:
    """Send one request, retransmit on the firmware's schedule until a reply of a wanted type.

    A NAK ends the exchange with DhcpFailed. ``timeouts`` are the waits before
    each retransmission (RFC 2131 4.1: 4, 8, 16... seconds with jitter, scaled
    by the caller); ``secs`` counts seconds since ``started`` as firmware does.
    """
    replies = relay.register(xid)
    try:
        for wait in timeouts:
            secs = min(0xFFFF, int(trio.current_time() - started))
            await relay.send(
                build_request_packet(message_type, mac, xid, relay.giaddr, options, secs=secs)
            )
            with trio.move_on_after(wait):
                while True:
                    reply = await replies.receive()
                    if reply.message_type == spec.DHCPNAK:
                        raise DhcpFailed("NAK")
                    if reply.message_type in want and reply.chaddr[: len(mac)] == mac:
                        return reply
        raise DhcpFailed(f"no reply to message type {message_type} after {len(timeouts)} tries")
    finally:
        relay.unregister(xid)
