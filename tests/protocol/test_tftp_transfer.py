"""The TFTP transfer cores, client and server, on a fake clock and a fake lossy network.

No sockets and no sleeping: `LossyLink` is a discrete-event simulation that
drops, duplicates and delays (hence reorders) datagrams with a seeded RNG, and
time jumps straight to the next delivery or deadline.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwboot.protocol.tftp import (
    BytesSource,
    ClientState,
    Limits,
    Outcome,
    Output,
    ReadClient,
    ReadRequest,
    ReadTransfer,
    ResponseSource,
    State,
    build_ack,
    build_data,
    build_error,
    build_oack,
    parse_packet_untrusted,
)
from cwboot.protocol.tftp import (
    Data as DataPacket,
)
from cwboot.protocol.tftp import (
    Error as ErrorPacket,
)


@dataclass
class LossyLink:
    seed: int
    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.001
    jitter: float = 0.0
    rng: random.Random = field(init=False)
    queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=lambda: {"to_client": 0, "to_server": 0})
    # Every datagram handed to send(), with its time and direction.
    log: list[tuple[float, str, bytes]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, direction: str, datagrams: list[bytes], now: float) -> None:
        for datagram in datagrams:
            self.log.append((now, direction, datagram))
            self.sent[direction] += 1
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    continue
                self._seq += 1
                when = now + self.delay + self.rng.random() * self.jitter
                heapq.heappush(self.queue, (when, self._seq, direction, datagram))


def run(
    content: bytes,
    *,
    options: dict[str, str] | None = None,
    limits: Limits | None = None,
    link: LossyLink | None = None,
    client_retries: int = 8,
    max_events: int = 2_000_000,
    source: Callable[[bytes], ResponseSource] = BytesSource,
) -> tuple[ReadClient, ReadTransfer, LossyLink]:
    """Drive one client against one server transfer until both are finished (client dallies)."""
    link = link or LossyLink(seed=0)
    limits = limits or Limits(retries=8)
    now = 0.0
    client = ReadClient("file", options=options, retries=client_retries)
    link.send("to_server", client.start(now).datagrams, now)
    server: ReadTransfer | None = None
    for _ in range(max_events):
        deadlines = [d for d in (client.deadline, server and server.deadline) if d is not None]
        if link.queue:
            deadlines.append(link.queue[0][0])
        if not deadlines or (server is not None and server.finished and not link.queue):
            break
        now = max(now, min(deadlines))
        while link.queue and link.queue[0][0] <= now:
            _, _, direction, datagram = heapq.heappop(link.queue)
            if direction == "to_client":
                link.send("to_server", client.receive_untrusted(datagram, now).datagrams, now)
            elif server is None:
                # The first RRQ to arrive creates the transfer (what the listener does);
                # later copies of the RRQ are duplicates the service drops.
                request = parse_packet_untrusted(datagram)
                assert isinstance(request, ReadRequest)
                server = ReadTransfer(request, source(content), limits=limits, now=now)
                link.send("to_client", server.start(now).datagrams, now)
            elif not isinstance(parse_packet_untrusted(datagram), ReadRequest):
                link.send("to_client", server.receive_untrusted(datagram, now).datagrams, now)
        if server is not None and server.deadline is not None and server.deadline <= now:
            link.send("to_client", server.timeout(now).datagrams, now)
        if client.deadline is not None and client.deadline <= now:
            link.send("to_server", client.timeout(now).datagrams, now)
    else:
        pytest.fail("simulation did not settle")
    assert server is not None
    return client, server, link


def content_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1468 * 3, 100_000])
@pytest.mark.parametrize("options", [None, {"blksize": "1468", "tsize": "0"}, {"windowsize": "8"}])
def test_clean_link_transfers_exactly(size: int, options: dict[str, str] | None) -> None:
    data = content_of(size)
    client, server, link = run(data, options=options)
    assert client.state is ClientState.DONE and bytes(client.data) == data
    assert server.outcome is Outcome.COMPLETED and server.state is State.DONE
    assert server.stats.retransmits == 0
    if options and "tsize" in options:
        assert client.tsize == size


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("windowsize", ["1", "4", "16"])
def test_lossy_duplicating_reordering_link(seed: int, windowsize: str) -> None:
    data = content_of(300_000, seed)
    link = LossyLink(seed=seed, loss=0.08, duplicate=0.1, delay=0.005, jitter=0.02)
    client, server, _ = run(data, options={"blksize": "1024", "windowsize": windowsize}, link=link)
    assert bytes(client.data) == data
    assert server.outcome is Outcome.COMPLETED
    assert server.stats.retransmits > 0  # the link really lost something


class StreamedSource:
    """Not a BytesSource: the transfer reads it block by block (the path of FileSource)."""

    def __init__(self, content: bytes) -> None:
        self._inner = BytesSource(content)

    def read(self, n: int) -> bytes:
        return self._inner.read(n)

    def size(self) -> int | None:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize(
    ("size", "options", "loss"),
    [
        (0, None, 0.0),
        (512 * 4, None, 0.0),
        (100_000, {"blksize": "1432"}, 0.08),
        (300_000, {"blksize": "1024", "windowsize": "16"}, 0.08),
        (70_000 * 8 + 3, {"blksize": "8", "windowsize": "4"}, 0.001),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_prebuilt_datagrams_send_exactly_what_reading_blocks_sends(
    size: int, options: dict[str, str] | None, loss: float, seed: int
) -> None:
    """In-memory content goes out as shared prebuilt datagrams; a streamed source is read per block.

    Same seeded lossy, duplicating, reordering link: every datagram either way
    sends, at the same times, and the same statistics.
    """
    data = content_of(size, seed)
    runs = []
    for source in (BytesSource, StreamedSource):
        link = LossyLink(seed=seed, loss=loss, duplicate=loss, delay=0.005, jitter=0.02)
        client, server, link = run(data, options=options, link=link, source=source)
        assert bytes(client.data) == data and server.outcome is Outcome.COMPLETED
        runs.append((link.log, dataclasses.asdict(server.stats)))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]


def test_transfers_of_one_content_share_its_datagrams() -> None:
    content = BytesSource(content_of(5000)).content
    one, two = (
        ReadTransfer(ReadRequest("f", "octet", {"blksize": "1000"}), BytesSource(content), limits=Limits(), now=0.0)
        for _ in range(2)
    )
    one.start(0.0)
    two.start(0.0)
    first = one.receive_untrusted(build_ack(0), 0.1).datagrams
    assert first == [build_data(1, content.data[:1000])]
    assert first[0] is two.receive_untrusted(build_ack(0), 0.1).datagrams[0]
    assert len(content.datagrams(1000)) == 6 and content.datagrams(1000)[-1] == build_data(6, b"")


def test_prebuilt_blksizes_are_bounded_and_others_still_transfer_exactly() -> None:
    """A peer choosing ever new blksizes cannot make a shared content prebuild a copy for each."""
    data = content_of(20_000)
    content = BytesSource(data).content
    for blksize in (512, 1000, 1432, 1468, 8):
        client, server, _ = run(
            data, options={"blksize": str(blksize)}, source=lambda _: BytesSource(content)
        )
        assert bytes(client.data) == data and server.outcome is Outcome.COMPLETED
        assert server.stats.blocks_sent == len(data) // blksize + 1
    assert content.datagrams(512) is not None and content.datagrams(1432) is not None
    assert content.datagrams(1468) is None and content.datagrams(8) is None


@pytest.mark.parametrize("windowsize", ["1", "8"])
def test_duplicated_acks_never_trigger_duplicate_data(windowsize: str) -> None:
    """Sorcerer's Apprentice (RFC 1123 §4.2.3.1): every packet duplicated, none lost."""
    data = content_of(200_000)
    link = LossyLink(seed=3, duplicate=1.0, delay=0.001)
    client, server, _ = run(data, options={"windowsize": windowsize}, link=link)
    assert bytes(client.data) == data
    blocks = len(data) // 512 + 1
    assert server.stats.blocks_sent == blocks
    assert server.stats.retransmits == 0
    assert server.stats.duplicate_acks > 0


@pytest.mark.parametrize("windowsize", ["1", "64"])
def test_block_numbers_roll_over_past_65535(windowsize: str) -> None:
    data = content_of(70_000 * 8 + 3)
    client, server, _ = run(data, options={"blksize": "8", "windowsize": windowsize})
    assert bytes(client.data) == data
    assert server.stats.blocks_sent == 70_001


def test_rollover_under_loss() -> None:
    data = content_of(66_000 * 16)
    link = LossyLink(seed=9, loss=0.002, duplicate=0.005, delay=0.002)
    client, _, _ = run(data, options={"blksize": "16", "windowsize": "16"}, link=link)
    assert bytes(client.data) == data


def test_oack_only_carries_requested_options() -> None:
    request = ReadRequest("f", "octet", {"blksize": "1400"})
    transfer = ReadTransfer(request, BytesSource(b"x" * 5000), limits=Limits(), now=0.0)
    assert transfer.start(0.0).datagrams == [build_oack({"blksize": "1400"})]


def test_no_options_means_no_oack() -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {"foo": "1"}), BytesSource(b"abc"), limits=Limits(), now=0.0
    )
    assert transfer.start(0.0).datagrams == [build_data(1, b"abc")]


def test_blksize_is_clamped_to_the_limit() -> None:
    request = ReadRequest("f", "octet", {"blksize": "65464", "windowsize": "1000"})
    transfer = ReadTransfer(
        request, BytesSource(b""), limits=Limits(max_blksize=1468, max_windowsize=32), now=0
    )
    assert transfer.start(0.0).datagrams == [build_oack({"blksize": "1468", "windowsize": "32"})]


@pytest.mark.parametrize(
    "options",
    [
        {"blksize": "0"},
        {"blksize": "-1"},
        {"blksize": "abc"},
        {"blksize": "7"},
        {"timeout": "0"},
        {"timeout": "256"},
        {"windowsize": "0"},
        {"windowsize": "65536"},
        {"tsize": "x"},
    ],
)
def test_bad_option_values_are_refused_with_error_8(options: dict[str, str]) -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", options), BytesSource(b"x"), limits=Limits(), now=0.0
    )
    (datagram,) = transfer.start(0.0).datagrams
    packet = parse_packet_untrusted(datagram)
    assert isinstance(packet, ErrorPacket) and packet.code == 8
    assert transfer.outcome is Outcome.REFUSED and transfer.deadline is None


def test_timeout_option_sets_the_retransmission_interval() -> None:
    request = ReadRequest("f", "octet", {"timeout": "3"})
    transfer = ReadTransfer(request, BytesSource(b"x" * 20000), limits=Limits(timeout=1.0), now=0.0)
    assert transfer.start(10.0).deadline == 13.0
    assert transfer.timeout(12.9).datagrams == []
    assert transfer.timeout(13.0) == Output([build_oack({"timeout": "3"})], 19.0)
    # Exponential backoff (RFC 1123 §4.2.3.2), capped at 4x the timeout.
    assert transfer.timeout(19.0).deadline == 31.0
    assert transfer.timeout(31.0).deadline == 43.0
    # Progress after retransmissions gives no RTT sample (Karn): the backed-off wait stays...
    assert transfer.receive_untrusted(build_ack(0), 44.0).deadline == 56.0
    # ...until a clean round trip (1 s here) brings it back to the negotiated timeout.
    assert transfer.receive_untrusted(build_ack(1), 45.0).deadline == 48.0


def test_retransmission_timeout_adapts_to_a_slow_client() -> None:
    """RTT 2.4 s against a 1 s timeout: a few early retransmissions, then none."""
    data = content_of(512 * 50)
    link = LossyLink(seed=1, delay=1.2)
    client, server, _ = run(
        data,
        options={"tsize": "0"},
        link=link,
        limits=Limits(timeout=1.0, retries=8),
        client_retries=20,
    )
    assert bytes(client.data) == data
    assert server.stats.retransmits <= 3


def test_retransmits_are_bounded_then_the_transfer_fails() -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {}), BytesSource(b"x" * 2000), limits=Limits(retries=3), now=0.0
    )
    out = transfer.start(0.0)
    sent = 1
    while out.deadline is not None:
        out = transfer.timeout(out.deadline)
        sent += len(out.datagrams)
    assert transfer.outcome is Outcome.TIMED_OUT and transfer.state is State.FAILED
    assert transfer.stats.retransmits == 3
    last = parse_packet_untrusted(out.datagrams[-1])
    assert isinstance(last, ErrorPacket)
    assert sent == 5  # DATA 1, three retransmissions, ERROR


def test_uefi_tsize_probe_then_error_8_is_a_clean_close() -> None:
    request = ReadRequest("ipxe.efi", "octet", {"tsize": "0", "blksize": "1468"})
    transfer = ReadTransfer(request, BytesSource(b"x" * 9000), limits=Limits(), now=0.0)
    assert transfer.start(0.0).datagrams == [build_oack({"tsize": "9000", "blksize": "1468"})]
    out = transfer.receive_untrusted(build_error(8, "tsize probe"), 0.1)
    assert out.datagrams == [] and out.deadline is None
    assert transfer.state is State.DONE and transfer.outcome is Outcome.PROBED


def test_other_peer_errors_fail_the_transfer() -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {}), BytesSource(b"x" * 2000), limits=Limits(), now=0.0
    )
    transfer.start(0.0)
    transfer.receive_untrusted(build_error(0, "user cancelled"), 0.1)
    assert transfer.outcome is Outcome.PEER_ERROR and "user cancelled" in transfer.error


def test_stray_packets_get_error_5_and_the_transfer_goes_on() -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {}), BytesSource(b"y" * 600), limits=Limits(), now=0.0
    )
    transfer.start(0.0)
    stray = parse_packet_untrusted(transfer.reply_to_stray())
    assert isinstance(stray, ErrorPacket) and stray.code == 5
    assert transfer.receive_untrusted(build_ack(1), 0.1).datagrams == [build_data(2, b"y" * 88)]
    transfer.receive_untrusted(build_ack(2), 0.2)
    assert transfer.outcome is Outcome.COMPLETED


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\x00\x09",
        b"\x00\x04\x00",
        b"\x00\x03\x00\x01hello",
        b"\x00\x01f\x00octet\x00",
    ],
)
def test_garbage_from_the_peer_is_ignored_not_fatal(garbage: bytes) -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {}), BytesSource(b"z" * 600), limits=Limits(), now=0.0
    )
    first = transfer.start(0.0)
    out = transfer.receive_untrusted(garbage, 0.1)
    assert out.datagrams == [] and out.deadline == first.deadline
    assert transfer.state is State.SENDING and sum(transfer.stats.ignored.values()) == 1
    transfer.receive_untrusted(build_ack(1), 0.2)
    transfer.receive_untrusted(build_ack(2), 0.3)
    assert transfer.outcome is Outcome.COMPLETED


def test_window_gap_restarts_after_the_acknowledged_block() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes = 20 blocks of 512 + an empty one
    transfer = ReadTransfer(
        ReadRequest("f", "octet", {"windowsize": "4"}), BytesSource(data), limits=Limits(), now=0.0
    )
    transfer.start(0.0)
    first = transfer.receive_untrusted(build_ack(0), 0.0).datagrams
    assert [parse_packet_untrusted(d).block for d in first] == [1, 2, 3, 4]  # type: ignore[union-attr]
    # The client saw 1, then 3: it acknowledges 1; the server goes back to 2.
    again = transfer.receive_untrusted(build_ack(1), 0.01).datagrams
    assert [parse_packet_untrusted(d).block for d in again] == [2, 3, 4, 5]  # type: ignore[union-attr]
    assert transfer.stats.retransmits == 3
    # A late duplicate of ACK 1 changes nothing.
    assert transfer.receive_untrusted(build_ack(1), 0.02).datagrams == []
    # An ACK beyond what was sent is ignored.
    assert transfer.receive_untrusted(build_ack(9), 0.02).datagrams == []


def test_netascii_translates_line_ends() -> None:
    transfer = ReadTransfer(
        ReadRequest("f", "netascii", {"tsize": "0"}),
        BytesSource(b"a\nb\rc"),
        limits=Limits(),
        now=0.0,
    )
    # Size is unknown after translation, so tsize is not acknowledged and there is no OACK.
    (datagram,) = transfer.start(0.0).datagrams
    packet = parse_packet_untrusted(datagram)
    assert isinstance(packet, DataPacket) and packet.payload == b"a\r\nb\r\0c"


PEER_DATAGRAMS = st.one_of(
    st.binary(max_size=40),
    st.builds(build_ack, st.integers(0, 0xFFFF)),
    st.builds(build_error, st.integers(0, 0xFFFF), st.text(max_size=10)),
)


@given(st.lists(PEER_DATAGRAMS, max_size=40), st.sampled_from(["1", "4"]))
def test_any_datagrams_from_the_peer_never_raise(datagrams: list[bytes], windowsize: str) -> None:
    """h11's fuzz invariant, for the transfer: whatever arrives, the core answers or ignores."""
    request = ReadRequest("f", "octet", {"windowsize": windowsize, "blksize": "8"})
    transfer = ReadTransfer(request, BytesSource(content_of(100)), limits=Limits(), now=0.0)
    now = 0.0
    transfer.start(now)
    for datagram in datagrams:
        now += 0.1
        out = transfer.receive_untrusted(datagram, now)
        assert out.deadline is None or out.deadline > now - 1
        if transfer.deadline is not None and transfer.deadline <= now:
            transfer.timeout(now)
    assert transfer.stats.blocks_sent <= 100 // 8 + 1 + transfer.stats.retransmits
