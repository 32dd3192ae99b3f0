"""The DHCP service on real sockets, in network namespaces the test creates (10.99.0.0/24).

The client side is a plain UDP socket speaking bytes built by tests/protocol/dhcp_helpers;
the real-client tests (udhcpc, dhclient, perfdhcp) are in test_dhcp_peers.py.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from cwboot.config import DhcpConfig
from cwboot.control.objects import validate_new
from cwboot.policy.node_table import NodeTable
from cwboot.protocol.dhcp import parse_untrusted
from cwboot.services.dhcp import DhcpBound, serve_dhcp
from tests.protocol.dhcp_helpers import discover, pxe_options, request_bytes
from tests.services.dhcp_netns import CLIENT, SERVER, NetnsPair

pytestmark = pytest.mark.netns

MAC = "52:54:00:00:00:07"
# Client sockets of the running test, closed by run().
_sockets: list[trio.socket.SocketType] = []


@pytest.fixture
def pair() -> NetnsPair:
    p = NetnsPair()
    yield p  # type: ignore[misc]
    p.close()


def nodes() -> NodeTable:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.99.0.0/24", "ip_offset": 100}, 0.0
    )
    node = {**validate_new("node", {"index": 7, "mac": [MAC]}, 0.0), "name": "n7"}
    return NodeTable([node], [pool])


def run(
    pair: NetnsPair,
    body: Callable[[DhcpBound], Awaitable[None]],
    lookup: NodeTable | None = None,
    enrol: Callable[[str], Awaitable[object]] | None = None,
    **settings: object,
) -> None:
    config = DhcpConfig(listen="0.0.0.0", port=67, interface=pair.server_if, **settings)  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with pair.entered("server"):
                bound = await nursery.start(
                    partial(
                        serve_dhcp,
                        config,
                        lookup or nodes(),
                        head_address=SERVER,
                        http_port=8081,
                        enrol=enrol,
                    )
                )
            try:
                with trio.fail_after(30):
                    await body(bound)
            finally:
                while _sockets:
                    _sockets.pop().close()
            nursery.cancel_scope.cancel()

    trio.run(main)


def client_socket(
    pair: NetnsPair, address: str = "0.0.0.0", port: int = 68
) -> trio.socket.SocketType:
    with pair.entered("client"):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, pair.client_if.encode())
    return sock


async def exchange(
    sock: trio.socket.SocketType, data: bytes, to: tuple[str, int] = (SERVER, 67)
) -> tuple[bytes, tuple[str, int]]:
    await sock.sendto(data, to)
    with trio.fail_after(3):
        return await sock.recvfrom(4096)  # type: ignore[no-any-return]


async def silent(sock: trio.socket.SocketType, data: bytes) -> None:
    await sock.sendto(data, (SERVER, 67))
    with trio.move_on_after(0.3):
        reply = await sock.recvfrom(4096)
        raise AssertionError(f"expected no reply, got {reply!r}")


def test_discover_gets_a_broadcast_offer_and_request_an_ack(pair: NetnsPair) -> None:
    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        data, source = await exchange(sock, discover(MAC, *pxe_options(0), xid=1))
        offer = parse_untrusted(data)
        assert source == (SERVER, 67)
        assert (offer.xid, offer.message_type, offer.yiaddr) == (1, 2, bytes((10, 99, 0, 107)))
        assert offer.file.rstrip(b"\0") == b"undionly.kpxe" and offer.siaddr == bytes(
            (10, 99, 0, 1)
        )
        req = request_bytes(
            mac=MAC,
            xid=2,
            options=[(53, b"\x03"), (54, offer.siaddr), (50, offer.yiaddr), (77, b"iPXE")],
        )
        ack = parse_untrusted((await exchange(sock, req))[0])
        assert (
            ack.message_type == 5
            and ack.file.rstrip(b"\0") == b"http://10.99.0.1:8081/boot/ipxe/52-54-00-00-00-07"
        )
        assert bound.stats.replied == {"offer": 1, "ack": 1}

    run(pair, body)


def test_relayed_request_is_answered_to_the_relay_with_option_82(pair: NetnsPair) -> None:
    agent = b"\x01\x06eth0/1\x02\x04\xde\xad\xbe\xef"

    async def body(bound: DhcpBound) -> None:
        relay = client_socket(pair)
        await relay.bind((CLIENT, 67))
        data, _ = await exchange(relay, discover(MAC, (82, agent), giaddr=CLIENT, hops=1))
        offer = parse_untrusted(data)
        assert offer.giaddr == bytes((10, 99, 0, 2)) and offer.options[82] == agent
        # Byte-exact, and the last option before END (RFC 3046 2.2).
        assert data.rstrip(b"\0").endswith(b"\x52" + bytes((len(agent),)) + agent + b"\xff")

    run(pair, body)


MALFORMED = [
    (b"", "bad packet: shorter than the 240-byte header"),
    (b"\x01", "bad packet: shorter than the 240-byte header"),
    (discover(MAC)[:235], "bad packet: shorter than the 240-byte header"),
    (request_bytes(mac=MAC, cookie=0x01020304), "bad packet: bad magic cookie"),
    (
        request_bytes(mac=MAC, options=b"\x35\x01\x01\x3d\x40abc"),
        "bad packet: option length past the end",
    ),
    (
        request_bytes(mac=MAC, options=[(53, b"\x01"), (52, b"\x07")]),
        "bad packet: bad option 52 (overload)",
    ),
    (
        request_bytes(mac=MAC, options=[(53, b"\x05\x05")]),
        "bad packet: bad option 53 (message type)",
    ),
    (
        discover(MAC, giaddr=CLIENT, hops=1, end=False) + b"\x52\x10\x01\x04port",
        "bad packet: option length past the end",
    ),
    (request_bytes(mac=MAC, options=[(53, b"\x02")]), "unexpected message type"),
    (request_bytes(mac=MAC, options=[]), "plain BOOTP (no option 53)"),
]


def test_malformed_input_is_dropped_counted_and_service_keeps_answering(pair: NetnsPair) -> None:
    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        for data, _ in MALFORMED:
            await silent(sock, data)
        expected: dict[str, int] = {}
        for _, reason in MALFORMED:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(bound.stats.dropped) == expected

        # Handled, not dropped: junk after END, a 255-byte client id, bad 93 and 97.
        offer = parse_untrusted((await exchange(sock, discover(MAC) + b"\x42\x99junk"))[0])
        assert offer.message_type == 2
        long_id = b"\x00" + bytes(range(254))
        offer = parse_untrusted((await exchange(sock, discover(MAC, (61, long_id))))[0])
        assert offer.options[61] == long_id
        pxe = [o for o in pxe_options(7) if o[0] not in (93, 97)]
        offer = parse_untrusted(
            (await exchange(sock, discover(MAC, *pxe, (93, b"\x00"), (97, b"\x05x"))))[0]
        )
        assert offer.file.rstrip(b"\0") == b"undionly.kpxe" and 97 not in offer.options
        assert bound.stats.warnings == {"option93_malformed": 1, "option97_malformed": 1}
        # Relayed (giaddr set) with an option 82 whose sub-options do not add up: not ours to
        # parse (RFC 3046 2.2), so the OFFER goes to the relay with it copied byte-exact.
        relay = client_socket(pair)
        await relay.bind((CLIENT, 67))
        agent = b"\x01\x09eth0\x02\x00" + bytes(range(1, 240))
        data, _ = await exchange(relay, discover(MAC, (82, agent), giaddr=CLIENT, hops=1))
        offer = parse_untrusted(data)
        assert offer.message_type == 2 and offer.giaddr == bytes((10, 99, 0, 2))
        assert data.rstrip(b"\0").endswith(b"\x52" + bytes((len(agent),)) + agent + b"\xff")
        # ... and an ordinary DISCOVER still gets its OFFER.
        offer = parse_untrusted((await exchange(sock, discover(MAC, xid=99)))[0])
        assert offer.xid == 99 and offer.yiaddr == bytes((10, 99, 0, 107))
        assert bound.stats.received == len(MALFORMED) + 5

    run(pair, body)


def test_unknown_mac_is_enrolled_off_the_hot_path_then_answered(pair: NetnsPair) -> None:
    table = nodes()
    enrolled: list[str] = []
    store_answers = trio.Event()

    async def enrol(mac: str) -> None:
        await store_answers.wait()  # a slow store round trip: the service keeps serving meanwhile
        enrolled.append(mac)
        table.add({"name": "n8", "index": 8, "mac": [mac], "naming_pool": "default"})

    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        new = "52:54:00:00:00:99"
        await silent(sock, discover(new))
        await silent(sock, discover(new))  # a retry while enrolling: enrolled once
        store_answers.set()
        while not enrolled:
            await trio.sleep(0.01)
        offer = parse_untrusted((await exchange(sock, discover(new)))[0])
        assert offer.yiaddr == bytes((10, 99, 0, 108))
        assert (
            enrolled == [new]
            and bound.stats.enrolled == 1
            and bound.stats.dropped["enrolling"] == 2
        )

    run(pair, body, lookup=table, enrol=enrol, unknown_mac="enrol")


def test_a_flood_of_unknown_macs_is_enrolled_at_most_at_the_allowed_rate(pair: NetnsPair) -> None:
    table = nodes()
    enrolled: list[str] = []
    flood = [f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(300)]

    async def enrol(mac: str) -> None:
        enrolled.append(mac)
        table.add({"name": f"e{len(enrolled)}", "index": 100 + len(enrolled), "mac": [mac],
                   "naming_pool": "default"})  # fmt: skip

    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        start = trio.current_time()
        for mac in flood:  # spoofed MACs, back to back
            await sock.sendto(discover(mac), (SERVER, 67))
        stats = bound.stats
        while stats.received < len(flood) or stats.enrolled < stats.dropped["enrolling"]:
            await trio.sleep(0.01)
        elapsed = trio.current_time() - start
        admitted = stats.dropped["enrolling"]
        assert admitted + stats.dropped["enrol rate limited"] == len(flood)
        # The burst at once, then at most enrol_rate per second of the flood.
        assert 5 <= len(enrolled) == admitted <= 5 + elapsed * 2
        assert set(enrolled) <= set(flood) and len(set(enrolled)) == len(enrolled)

    run(pair, body, lookup=table, enrol=enrol, unknown_mac="enrol", enrol_rate=2.0, enrol_burst=5)


def test_unknown_mac_ignored_by_default(pair: NetnsPair) -> None:
    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        await silent(sock, discover("52:54:00:00:00:99"))
        assert bound.stats.dropped == {"unknown MAC": 1}

    run(pair, body)


def test_proxy_mode_answers_pxe_with_boot_info_and_on_port_4011(pair: NetnsPair) -> None:
    async def body(bound: DhcpBound) -> None:
        assert bound.proxy_port == 4011
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        offer = parse_untrusted((await exchange(sock, discover(MAC, *pxe_options(9))))[0])
        assert (
            offer.yiaddr == bytes(4)
            and offer.file.rstrip(b"\0") == b"ipxe.efi"
            and 51 not in offer.options
        )
        await silent(sock, discover(MAC))  # not a PXE client
        unicast = client_socket(pair)
        await unicast.bind((CLIENT, 68))
        req = request_bytes(mac=MAC, ciaddr=CLIENT, options=[(53, b"\x03"), *pxe_options(9)])
        data, source = await exchange(unicast, req, (SERVER, 4011))
        ack = parse_untrusted(data)
        assert (
            source == (SERVER, 4011)
            and ack.message_type == 5
            and ack.file.rstrip(b"\0") == b"ipxe.efi"
        )

    run(pair, body, mode="proxy")


def test_proxy_mode_ipxe_gets_a_proxydhcp_offer_and_its_script_on_4011(pair: NetnsPair) -> None:
    script = b"http://10.99.0.1:8081/boot/ipxe/52-54-00-00-00-07"
    ipxe = [*pxe_options(0), (77, b"iPXE")]

    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        # What iPXE's dhcp.c needs to take it as a ProxyDHCP offer: option 60 "PXEClient",
        # a server id, and (to skip the ProxyDHCPREQUEST) a boot file name.
        offer = parse_untrusted((await exchange(sock, discover(MAC, *ipxe, flags=0x8000)))[0])
        assert offer.message_type == 2 and offer.yiaddr == bytes(4)
        assert offer.options[60][:9] == b"PXEClient" and offer.options[54] == bytes((10, 99, 0, 1))
        assert offer.file.rstrip(b"\0") == script
        # Its REQUEST on port 67 belongs to the site DHCP server.
        await silent(sock, request_bytes(mac=MAC, options=[(53, b"\x03"), (54, bytes((10, 99, 0, 254))), *ipxe]))
        # A ProxyDHCPREQUEST (to <server id>:4011, ciaddr = the leased address) gets an ACK
        # from port 4011 with the same server id and the script.
        unicast = client_socket(pair)
        await unicast.bind((CLIENT, 68))
        req = request_bytes(
            mac=MAC, ciaddr=CLIENT, options=[(53, b"\x03"), (54, offer.options[54]), *ipxe]
        )
        data, source = await exchange(unicast, req, (SERVER, 4011))
        ack = parse_untrusted(data)
        assert source == (SERVER, 4011) and ack.message_type == 5
        assert ack.options[54] == offer.options[54] and ack.options[60][:9] == b"PXEClient"
        assert ack.file.rstrip(b"\0") == script
        assert bound.stats.dropped == {"request for another server": 1}

    run(pair, body, mode="proxy")


def test_repeated_requests_take_the_fast_path_and_get_the_same_answer(pair: NetnsPair) -> None:
    """The first PXE DISCOVER is answered by the full path (which compiles a template), its
    retries by the fast path: byte-identical but for their own xid, counted in stats.fast."""

    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        replies = []
        for xid in (1, 2, 3):
            data, source = await exchange(sock, discover(MAC, *pxe_options(7), xid=xid, flags=0x8000))
            assert source == (SERVER, 67)
            replies.append(data)
        assert [parse_untrusted(r).xid for r in replies] == [1, 2, 3]
        assert replies[0][:4] + replies[0][8:] == replies[1][:4] + replies[1][8:] == replies[2][:4] + replies[2][8:]
        assert bound.stats.replied == {"offer": 3} and bound.stats.fast == 2
        assert bound.stats.received == 3 and bound.stats.dropped == {}

    run(pair, body)


def test_a_burst_is_answered_in_batches_without_loss(pair: NetnsPair) -> None:
    """200 DISCOVERs from 20 known MACs sent back to back (the native loop reads them in
    recvmmsg batches and holds between batches): every one answered, with its own xid."""
    macs = [f"52:54:00:00:01:{i:02x}" for i in range(20)]
    pool = validate_new("naming_pool", {"name": "default", "network": "10.99.0.0/24", "ip_offset": 100}, 0.0)
    table = NodeTable(
        [{**validate_new("node", {"index": i, "mac": [m]}, 0.0), "name": f"n{i}"} for i, m in enumerate(macs)],
        [pool],
    )

    async def body(bound: DhcpBound) -> None:
        sock = client_socket(pair)
        # Room for every reply: this client reads them slower than they come.
        sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root, like the netns tests)
        await sock.bind(("0.0.0.0", 68))
        for i in range(200):
            await sock.sendto(discover(macs[i % 20], *pxe_options(0), xid=i, flags=0x8000), (SERVER, 67))
        got = set()
        with trio.fail_after(10):
            while len(got) < 200:
                data, _ = await sock.recvfrom(4096)
                reply = parse_untrusted(data)
                assert reply.yiaddr == bytes((10, 99, 0, 100 + macs.index(reply.mac)))
                got.add(reply.xid)
        assert got == set(range(200))
        assert bound.stats.replied == {"offer": 200} and bound.stats.fast == 180
        assert bound.stats.dropped == {}

    run(pair, body, table)


def test_idle_warming_answers_a_nodes_first_request_from_a_template(pair: NetnsPair) -> None:
    """While idle the service compiles templates for every node: a first plain DISCOVER takes
    the fast path at once; a PXE ROM's class, learned from one node, is warmed for the others."""
    macs = [MAC, "52:54:00:00:00:08"]
    pool = validate_new("naming_pool", {"name": "default", "network": "10.99.0.0/24", "ip_offset": 100}, 0.0)
    table = NodeTable(
        [{**validate_new("node", {"index": 7 + i, "mac": [m]}, 0.0), "name": f"n{7 + i}"} for i, m in enumerate(macs)],
        [pool],
    )

    async def sweeps(bound: DhcpBound, count: int) -> None:
        with trio.fail_after(5):
            while bound.stats.warm_sweeps < count:
                await trio.sleep(0.05)

    async def body(bound: DhcpBound) -> None:
        await sweeps(bound, 1)
        assert bound.stats.warmed == 2  # the plain class, both nodes
        sock = client_socket(pair)
        await sock.bind(("0.0.0.0", 68))
        data, _ = await exchange(sock, discover(MAC, xid=1, flags=0x8000))
        assert parse_untrusted(data).yiaddr == bytes((10, 99, 0, 107))
        assert bound.stats.fast == 1
        # The first PXE DISCOVER (full path) teaches its class; the next idle sweep warms it.
        await exchange(sock, discover(MAC, *pxe_options(7), xid=2, flags=0x8000))
        assert bound.stats.fast == 1
        await sweeps(bound, 2)
        data, _ = await exchange(sock, discover(macs[1], *pxe_options(7), xid=3, flags=0x8000))
        assert parse_untrusted(data).yiaddr == bytes((10, 99, 0, 108))
        assert bound.stats.fast == 2 and bound.stats.warmed == 3
        assert bound.stats.replied == {"offer": 3} and bound.stats.dropped == {}

    run(pair, body, table)
