"""The TFTP service on 127.0.0.1 (port 0): transfers, refusals, stray ports, caps, probes, garbage."""

from __future__ import annotations

import functools
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cwboot.config import TftpConfig
from cwboot.protocol.tftp import (
    Data,
    Error,
    OptionAck,
    build_ack,
    build_error,
    build_request,
    parse_packet_untrusted,
)
from cwboot.services.tftp import TftpServer, fetch_tftp, serve_tftp

LOCALHOST = "127.0.0.1"


def trio_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test under trio.run (fixtures still come from the wrapped signature)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "kernel").write_bytes(random.Random(7).randbytes(700_000))
    (root / "small").write_bytes(b"small file\n")
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret")
    return root


@asynccontextmanager
async def running(
    root: Path,
    generated: Callable[[str, tuple[str, int]], bytes | None] | None = None,
    **settings: object,
) -> AsyncIterator[TftpServer]:
    settings.setdefault("timeout", 0.3)
    config = TftpConfig(listen=LOCALHOST, port=0, **settings)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_tftp(
                config, root=root, task_status=task_status, generated=generated
            )
        )
        yield server
        nursery.cancel_scope.cancel()


async def exchange(
    sock: trio.socket.SocketType, datagram: bytes, to: tuple[str, int], wait: float = 0.5
):  # type: ignore[no-untyped-def]
    await sock.sendto(datagram, to)
    with trio.move_on_after(wait):
        return await sock.recvfrom(70000)
    return None, None


def udp() -> trio.socket.SocketType:
    return trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


@pytest.mark.parametrize(
    "options", [None, {"blksize": "1468", "tsize": "0"}, {"blksize": "1400", "windowsize": "16"}]
)
@trio_test
async def test_fetch_a_file(root: Path, options: dict[str, str] | None) -> None:
    async with running(root) as server:
        result = await fetch_tftp(LOCALHOST, server.port, "kernel", options=options)
    assert result.ok, result.error
    assert (
        hashlib.sha256(result.data).digest()
        == hashlib.sha256((root / "kernel").read_bytes()).digest()
    )
    (record,) = server.stats.recent
    assert record.outcome == "completed" and record.stats.retransmits == 0
    assert record.stats.blksize == int((options or {}).get("blksize", 512))
    assert record.stats.windowsize == int((options or {}).get("windowsize", 1))
    assert record.stats.duration is not None and record.stats.duration > 0
    assert record.stats.packets_sent == record.stats.blocks_sent + (1 if options else 0)


@trio_test
async def test_debian_loader_and_generated_content(root: Path) -> None:
    def generate(name: str, peer: tuple[str, int]) -> bytes | None:
        return f"#!ipxe\necho hello {peer[0]}\n".encode() if name == "boot.ipxe" else None

    async with running(root, generate) as server:
        loader = await fetch_tftp(LOCALHOST, server.port, "undionly.kpxe", options={"tsize": "0"})
        script = await fetch_tftp(LOCALHOST, server.port, "boot.ipxe")
    assert loader.data == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    assert loader.tsize == len(loader.data)
    assert script.data == b"#!ipxe\necho hello 127.0.0.1\n"


@pytest.mark.parametrize(
    ("name", "code"),
    [("../secret", 2), ("/etc/passwd", 2), ("escape", 2), ("a\\b", 2), ("missing", 1)],
)
@trio_test
async def test_refused_names_get_an_error_and_nothing_else(
    root: Path, name: str, code: int
) -> None:
    async with running(root) as server, trio.open_nursery():
        with udp() as sock:
            await sock.bind((LOCALHOST, 0))
            reply, _ = await exchange(sock, build_request(name), (LOCALHOST, server.port))
            assert reply is not None
            packet = parse_packet_untrusted(reply)
            assert isinstance(packet, Error) and packet.code == code
            again, _ = await exchange(sock, build_ack(1), (LOCALHOST, server.port), wait=0.4)
            assert again is None or isinstance(parse_packet_untrusted(again), Error)
    assert server.stats.outcomes["refused"] + sum(server.stats.drops.values()) >= 1
    assert server.stats.outcomes["completed"] == 0


GARBAGE = [
    b"",
    b"\x00",
    b"\x00\x09garbage",
    b"\x00\x02file\x00octet\x00",
    b"\x00\x01file-without-nul",
    b"\x00\x01small\x00octet\x00blksize\x000\x00",
    b"\x00\x01small\x00octet\x00blksize\x00-1\x00",
    b"\x00\x01small\x00octet\x00blksize\x00abc\x00",
    b"\x00\x01small\x00octet\x00" + b"".join(b"o%d\x001\x00" % i for i in range(200)),
    b"\x00\x01" + b"a" * 65000 + b"\x00octet\x00",
]


@trio_test
async def test_garbage_never_stops_the_listener(root: Path) -> None:
    async with running(root) as server:
        for datagram in GARBAGE:  # one port each, or they would be duplicates of each other
            with udp() as sock:
                await sock.bind((LOCALHOST, 0))
                await sock.sendto(datagram, (LOCALHOST, server.port))
        await trio.sleep(0.2)
        result = await fetch_tftp(LOCALHOST, server.port, "small")
    assert result.ok and result.data == b"small file\n"
    drops = server.stats.drops
    assert (
        drops["short_datagram"] == 2 and drops["write_refused"] == 1 and drops["bad_blksize"] == 3
    )
    assert drops["request_too_long"] == 2 and drops["not_a_request"] == 1
    assert server.stats.requests == len(GARBAGE) + 1


@trio_test
async def test_stray_port_gets_error_5_and_the_transfer_goes_on(root: Path) -> None:
    async with running(root) as server:
        with udp() as client, udp() as stray:
            await client.bind((LOCALHOST, 0))
            await stray.bind((LOCALHOST, 0))
            first, transfer_id = await exchange(
                client, build_request("small"), (LOCALHOST, server.port)
            )
            assert isinstance(parse_packet_untrusted(first), Data)
            reply, _ = await exchange(stray, build_ack(1), transfer_id)
            packet = parse_packet_untrusted(reply)
            assert isinstance(packet, Error) and packet.code == 5
            await client.sendto(build_ack(1), transfer_id)
            await trio.sleep(0.1)
    (record,) = server.stats.recent
    assert record.outcome == "completed"
    assert server.stats.drops["stray_transfer_id"] == 1


@trio_test
async def test_uefi_tsize_probe_is_a_clean_close(root: Path) -> None:
    async with running(root) as server:
        with udp() as sock:
            await sock.bind((LOCALHOST, 0))
            reply, transfer_id = await exchange(
                sock, build_request("kernel", options={"tsize": "0"}), (LOCALHOST, server.port)
            )
            assert parse_packet_untrusted(reply) == OptionAck({"tsize": "700000"})
            await sock.sendto(build_error(8, "tsize probe only"), transfer_id)
            await trio.sleep(0.1)
        result = await fetch_tftp(LOCALHOST, server.port, "kernel", options={"tsize": "0"})
    assert result.ok
    assert [r.outcome for r in server.stats.recent] == ["probed", "completed"]
    assert "peer_error" not in server.stats.outcomes


@trio_test
async def test_per_peer_cap_drops_the_extra_request(root: Path) -> None:
    async with running(root, max_transfers_per_peer=1) as server:
        with udp() as one, udp() as two:
            await one.bind((LOCALHOST, 0))
            await two.bind((LOCALHOST, 0))
            first, _ = await exchange(one, build_request("kernel"), (LOCALHOST, server.port))
            assert first is not None
            second, _ = await exchange(
                two, build_request("kernel"), (LOCALHOST, server.port), wait=0.2
            )
            assert second is None
            assert server.stats.drops["over_peer_cap"] == 1
        # Abandoned transfer times out (bounded retransmits), then the peer may fetch again.
        with trio.fail_after(10):
            while server.stats.active:
                await trio.sleep(0.1)
        result = await fetch_tftp(LOCALHOST, server.port, "small")
    assert result.ok
    assert server.stats.outcomes["timed_out"] == 1


@trio_test
async def test_duplicate_rrq_does_not_start_a_second_transfer(root: Path) -> None:
    async with running(root) as server:
        with udp() as sock:
            await sock.bind((LOCALHOST, 0))
            await sock.sendto(build_request("small"), (LOCALHOST, server.port))
            await sock.sendto(build_request("small"), (LOCALHOST, server.port))
            reply, transfer_id = await sock.recvfrom(2000)
            await sock.sendto(build_ack(1), transfer_id)
            await trio.sleep(0.2)
    assert server.stats.drops["duplicate_request"] == 1
    assert server.stats.outcomes == {"completed": 1}


@trio_test
async def test_a_failing_generator_is_an_error_not_a_crash(root: Path) -> None:
    def generate(name: str, peer: tuple[str, int]) -> bytes | None:
        raise RuntimeError("bug in a generator")

    async with running(root, generate) as server:
        failed = await fetch_tftp(LOCALHOST, server.port, "small", retries=1)
        assert not failed.ok and "internal error" in failed.error
    assert server.stats.drops["generator_failed"] == 1


def mock_clock_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run under trio's autojump MockClock: waits of seconds take no real time.

    (Loopback sockets deliver at sendto, so every packet is readable before the
    clock jumps: the virtual timeline is that of a zero-latency network.)
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        trio.run(functools.partial(fn, *args, **kwargs), clock=trio.testing.MockClock(autojump_threshold=0))

    return wrapper


async def hold_a_slot(
    server: TftpServer, address: str, *, until: float, task_status: trio.TaskStatus[None]
) -> None:
    """Take a transfer slot from ``address`` (RRQ, never ACK), end it with ERROR at ``until``."""
    with udp() as sock:
        await sock.bind((address, 0))
        reply, transfer_id = await exchange(sock, build_request("kernel"), (LOCALHOST, server.port))
        assert isinstance(parse_packet_untrusted(reply), Data)
        task_status.started()
        await trio.sleep_until(until)
        await sock.sendto(build_error(0, "enough"), transfer_id)


@mock_clock_test
async def test_requests_over_the_total_cap_wait_and_start_in_arrival_order(root: Path) -> None:
    # One slot, held for 3 s; four clients (own addresses) ask meanwhile, and keep
    # retransmitting their RRQs every second as firmware does.
    async with running(root, max_transfers=1, timeout=1.0) as server, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hold_a_slot, server, "127.0.0.2", until=3.0))
        results: dict[str, bool] = {}

        async def fetch(address: str) -> None:
            result = await fetch_tftp(LOCALHOST, server.port, "kernel", timeout=1.0, bind=address)
            results[address] = result.ok and result.data == (root / "kernel").read_bytes()

        clients = [f"127.0.0.{i}" for i in range(3, 7)]
        for address in clients:
            nursery.start_soon(fetch, address)
            await trio.sleep(0.1)
        assert server.stats.waiting == 4 and server.stats.active == 1
    assert results == dict.fromkeys(clients, True)
    assert [r.peer[0] for r in server.stats.recent] == ["127.0.0.2", *clients]
    assert server.stats.outcomes == {"peer_error": 1, "completed": 4}
    assert server.stats.queued == 4 and server.stats.waiting == 0
    # Each waiting client retransmitted its RRQ (1 s after the first): duplicates, queued once.
    assert set(server.stats.drops) == {"duplicate_request"}
    assert server.stats.drops["duplicate_request"] >= len(clients)


@mock_clock_test
async def test_a_repeated_rrq_of_a_waiting_client_is_queued_once(root: Path) -> None:
    async with running(root, max_transfers=1) as server, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hold_a_slot, server, "127.0.0.2", until=2.0))
        with udp() as sock:
            await sock.bind(("127.0.0.3", 0))
            for _ in range(3):
                await sock.sendto(build_request("small"), (LOCALHOST, server.port))
                await trio.sleep(0.5)
            assert server.stats.waiting == 1 and server.stats.drops["duplicate_request"] == 2
            with trio.fail_after(5):
                reply, transfer_id = await sock.recvfrom(2000)
            assert parse_packet_untrusted(reply) == Data(1, b"small file\n")
            await sock.sendto(build_ack(1), transfer_id)
            with trio.move_on_after(3):  # one transfer: no second DATA from another port
                reply, other = await sock.recvfrom(2000)
                assert other == transfer_id, "a second transfer started"
    assert server.stats.outcomes == {"peer_error": 1, "completed": 1}
    assert server.stats.queued == 1


@mock_clock_test
async def test_a_full_queue_drops_and_counts_and_the_client_gets_in_on_a_retry(root: Path) -> None:
    async with running(root, max_transfers=1, max_queued=1) as server, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hold_a_slot, server, "127.0.0.2", until=2.0))
        first = await fetch_tftp(LOCALHOST, server.port, "small", bind="127.0.0.3", retries=0, timeout=0.2)
        assert not first.ok  # queued, then gave up after 0.2 s; nobody retransmits for it
        with udp() as sock:
            await sock.bind(("127.0.0.4", 0))
            await sock.sendto(build_request("small"), (LOCALHOST, server.port))
            await trio.sleep(0.1)
            assert server.stats.drops["queue_full"] == 1 and server.stats.waiting == 1
        late = await fetch_tftp(LOCALHOST, server.port, "small", bind="127.0.0.4", timeout=1.0)
    assert late.ok and late.data == b"small file\n"
    # 127.0.0.3's client gave up, but within queue_timeout: its entry took the freed slot
    # and timed out; 127.0.0.4, dropped while the queue was full, got in on a later retry.
    assert [(r.peer[0], r.outcome) for r in server.stats.recent] == [
        ("127.0.0.2", "peer_error"), ("127.0.0.3", "timed_out"), ("127.0.0.4", "completed")
    ]
    assert server.stats.drops["queue_full"] >= 2 and server.stats.queued == 2


@mock_clock_test
async def test_a_waiting_client_gone_silent_is_forgotten(root: Path) -> None:
    async with running(root, max_transfers=1, queue_timeout=2.0) as server, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hold_a_slot, server, "127.0.0.2", until=5.0))
        with udp() as silent:
            await silent.bind(("127.0.0.3", 0))
            await silent.sendto(build_request("small"), (LOCALHOST, server.port))
            await trio.sleep(0.1)
            # Heard from every second (its retransmissions): kept past queue_timeout.
            alive = await fetch_tftp(LOCALHOST, server.port, "small", bind="127.0.0.4", timeout=1.0)
            assert alive.ok
            with trio.move_on_after(1):
                assert await silent.recvfrom(2000) is None, "the silent client got a transfer"
    assert server.stats.drops["queue_timeout"] == 1
    assert [r.peer[0] for r in server.stats.recent] == ["127.0.0.2", "127.0.0.4"]


@mock_clock_test
async def test_max_queued_0_drops_every_request_over_the_total_cap(root: Path) -> None:
    async with running(root, max_transfers=1, max_queued=0) as server, trio.open_nursery() as nursery:
        await nursery.start(functools.partial(hold_a_slot, server, "127.0.0.2", until=1.0))
        refused = await fetch_tftp(LOCALHOST, server.port, "small", bind="127.0.0.3", retries=0, timeout=0.5)
        assert not refused.ok and server.stats.drops["queue_full"] == 1
        # Asks at 0.5 s (dropped: the slot is held until 1 s), gets in with its retry at 1.5 s.
        later = await fetch_tftp(LOCALHOST, server.port, "small", bind="127.0.0.3", timeout=1.0)
    assert later.ok and later.retransmits == 1
    assert server.stats.drops["queue_full"] == 2 and server.stats.queued == 0


async def listen_until_silent(sock: trio.socket.SocketType, quiet: float) -> list[tuple[float, bytes]]:
    """(time, datagram) of everything arriving on ``sock`` until ``quiet`` seconds pass without any."""
    got: list[tuple[float, bytes]] = []
    while True:
        with trio.move_on_after(quiet):
            data, _ = await sock.recvfrom(70000)
            got.append((trio.current_time(), data))
            continue
        return got


@mock_clock_test
async def test_retransmission_timers_of_concurrent_transfers_follow_trio_clock(root: Path) -> None:
    # Two transfers nobody ACKs: A (timeout option 3 s) starts first, B (1 s) half a
    # second later and is due first. Each retransmits on its own schedule (the
    # interval doubles per timeout up to 4x), then gives up with an ERROR.
    async with running(root, timeout=1.0, retries=3) as server:
        with udp() as a, udp() as b:
            await a.bind(("127.0.0.2", 0))
            await b.bind(("127.0.0.3", 0))
            heard: dict[str, list[tuple[float, bytes]]] = {}

            async def listen(name: str, sock: trio.socket.SocketType) -> None:
                heard[name] = await listen_until_silent(sock, 30)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen, "a", a)
                nursery.start_soon(listen, "b", b)
                started = trio.current_time()
                await a.sendto(build_request("small", options={"timeout": "3"}), (LOCALHOST, server.port))
                await trio.sleep(0.5)
                await b.sendto(build_request("small"), (LOCALHOST, server.port))
    times_a = [round(t - started, 6) for t, _ in heard["a"]]
    times_b = [round(t - started, 6) for t, _ in heard["b"]]
    assert times_a == [0, 3, 9, 21, 33]  # OACK, 3 retransmissions (6 s, 12 s, 12 s), ERROR
    assert times_b == [0.5, 1.5, 3.5, 7.5, 11.5]  # DATA 1, retransmitted after 1, 2, 4 s, ERROR
    assert [parse_packet_untrusted(d) for _, d in heard["a"][:4]] == [OptionAck({"timeout": "3"})] * 4
    assert [parse_packet_untrusted(d) for _, d in heard["b"][:4]] == [Data(1, b"small file\n")] * 4
    for name in "ab":
        final = parse_packet_untrusted(heard[name][-1][1])
        assert isinstance(final, Error) and "timed out" in final.message
    assert server.stats.outcomes == {"timed_out": 2} and server.stats.retransmits == 6


class FullBufferSocket(socket.socket):
    """A UDP socket whose send buffer is 'full' (EAGAIN) on every third sendto."""

    calls = 0

    def sendto(self, *args: Any) -> int:  # type: ignore[override]
        FullBufferSocket.calls += 1
        if FullBufferSocket.calls % 3 == 0:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().sendto(*args)


@trio_test
async def test_a_full_socket_buffer_delays_the_window_in_order(root: Path) -> None:
    """A datagram the socket has no room for waits, in order, until the socket is writable."""
    from cwboot.protocol.tftp import Limits, ReadTransfer, parse_request_untrusted
    from cwboot.services.tftp import _Service

    service = _Service(TftpConfig(listen=LOCALHOST, port=0), root, None, {})
    content = (root / "kernel").read_bytes()
    with udp() as listener, FullBufferSocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await listener.bind((LOCALHOST, 0))
        sock.setblocking(False)
        sock.bind((LOCALHOST, 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.pump.run)
            nursery.start_soon(service.pump.run_timers)
            options = {"blksize": "1400", "windowsize": "16"}
            fetching = trio.Event()
            results = []

            async def fetch() -> None:
                fetching.set()
                results.append(await fetch_tftp(LOCALHOST, listener.getsockname()[1], "kernel", options=options))

            nursery.start_soon(fetch)
            await fetching.wait()
            rrq, peer = await listener.recvfrom(2000)
            source = service.open_source_untrusted(parse_request_untrusted(rrq), peer)
            transfer = ReadTransfer(parse_request_untrusted(rrq), source, limits=Limits(), now=trio.current_time())
            await service.pump.serve(sock, transfer, peer)
            with trio.fail_after(5):
                while not results:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        service.pump.close()
    (result,) = results
    assert result.ok and result.data == content
    assert transfer.stats.retransmits == 0 and not service.stats.drops
    assert FullBufferSocket.calls > transfer.stats.packets_sent  # some sends really waited
