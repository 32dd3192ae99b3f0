"""The server side of one read transfer, sans-IO: datagrams and `now` in, datagrams and a deadline out.

States and what moves between them (the table ``_SERVER_TRANSITIONS`` below
is the code; a (state, packet) pair missing from it is ignored and counted):

    AWAIT_OACK_ACK --ACK 0-----------------------> SENDING (first window)
    AWAIT_OACK_ACK --ERROR 8---------------------> DONE, outcome PROBED
                     (UEFI asks for tsize, then aborts: a clean close)
    AWAIT_OACK_ACK --ERROR other-----------------> FAILED, outcome PEER_ERROR
    SENDING        --ACK k in window-------------> SENDING (next window) or DONE, COMPLETED
    SENDING        --ACK already seen------------> SENDING, nothing sent
                     (no Sorcerer's Apprentice: only a timeout retransmits)
    SENDING        --ERROR-----------------------> FAILED, outcome PEER_ERROR
    any live state --deadline passed-------------> same state, retransmit
                     (the OACK, or the window from the first unacknowledged block);
                     the wait is adaptive (RTT estimate, never below the
                     negotiated timeout) and doubles per timeout, up to 4x
    any live state --more than `retries` timeouts-> FAILED, outcome TIMED_OUT

Windows follow RFC 7440: after ACK k the server sends k+1 .. k+windowsize; an
ACK for a block inside the window (the client saw a gap) restarts the window
after it (go-back-N). Block numbers are 16 bits on the wire and wrap to 0
after 65535; internally blocks are counted without wrapping, so a file of
any length works and an ACK maps to exactly one block of the window.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from cwboot.protocol.tftp._options import Limits, negotiate_untrusted
from cwboot.protocol.tftp._source import BytesSource, NetasciiSource, ResponseSource
from cwboot.protocol.tftp._wire import (
    Ack,
    BadPacket,
    Error,
    ErrorCode,
    Opcode,
    Packet,
    ReadRequest,
    build_data,
    build_error,
    build_oack,
    parse_packet_untrusted,
)

BACKOFF_CAP = 4
# The first two bytes of an ACK (the fast path of receive_untrusted).
_ACK_OPCODE = Opcode.ACK.to_bytes(2, "big")


class State(enum.Enum):
    AWAIT_OACK_ACK = "await_oack_ack"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class Outcome(enum.Enum):
    COMPLETED = "completed"
    PROBED = "probed"  # OACK answered with ERROR 8: a size probe, not a failure
    PEER_ERROR = "peer_error"
    TIMED_OUT = "timed_out"
    REFUSED = "refused"  # the request itself was answered with ERROR


@dataclass
class TransferStats:
    """fbtftp's per-transfer statistics, plus what the window did."""

    started: float
    finished: float | None = None
    blksize: int = 512
    windowsize: int = 1
    packets_sent: int = 0
    packets_received: int = 0
    blocks_sent: int = 0
    bytes_sent: int = 0
    retransmits: int = 0
    duplicate_acks: int = 0
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


@dataclass(slots=True)
class Output:
    """What to do now: send these datagrams (to the peer), wake up at ``deadline``.

    (Not frozen: one is made per packet, and a frozen dataclass costs twice as
    much to construct. Treat it as read-only.)
    """

    datagrams: list[bytes]
    deadline: float | None


class ReadTransfer:
    """One RRQ being served. Create it, call :meth:`start`, then feed it.

    Construction never raises: an RRQ whose options are refused turns into a
    transfer that sends one ERROR and ends with outcome REFUSED.
    """

    def __init__(
        self, request: ReadRequest, source: ResponseSource, *, limits: Limits, now: float
    ) -> None:
        if request.mode == "netascii":
            source = NetasciiSource(source)
        self.request = request
        self.outcome: Outcome | None = None
        self.error: str = ""
        self.stats = TransferStats(started=now)
        self._source = source
        self._limits = limits
        self._retries_left = limits.retries
        # Seconds until the next retransmission (RFC 1123 §4.2.3.2: adaptive,
        # with exponential backoff). On progress it is the retransmission
        # timeout estimated from round trips (Jacobson/Karels; Karn: no sample
        # from a retransmitted flight), never below the negotiated timeout;
        # each timeout doubles it, up to BACKOFF_CAP times the negotiated
        # timeout. Without this a saturated head, or a slow client, drowns in
        # retransmitted windows.
        self._interval = 0.0
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._flight_sent_at: float | None = None
        self.deadline: float | None = None
        # Blocks are numbered 1.. without wrapping; `_base` is the first not yet
        # acknowledged, `_sent` the highest sent, `_last` the final one once known.
        self._base = 1
        self._sent = 0
        self._last: int | None = None
        self._read = 0
        self._cache: dict[int, bytes] = {}
        # Octet content held in memory: its DATA datagrams, built once per blksize
        # and shared by every transfer of the same content (index = block - 1).
        self._datagrams: list[bytes] | None = None
        try:
            self.negotiated = negotiate_untrusted(request.options, source.size(), limits)
        except BadPacket as exc:
            # Why the request is refused (ERROR 8 on start), for the counters.
            self.refusal: BadPacket | None = exc
            self.negotiated = negotiate_untrusted({}, None, limits)
        else:
            self.refusal = None
        self.stats.blksize = self.negotiated.blksize
        self.stats.windowsize = self.negotiated.windowsize
        # Read per packet: plain attributes.
        self._floor = self.negotiated.timeout
        self._windowsize = self.negotiated.windowsize
        self._blksize = self.negotiated.blksize
        if isinstance(source, BytesSource) and self.refusal is None:
            self._datagrams = source.content.datagrams(self.negotiated.blksize)
            if self._datagrams is not None:
                self._last = len(self._datagrams)
        self.finished = False
        self.state = State.AWAIT_OACK_ACK if self.negotiated.oack else State.SENDING

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        self._state = state
        # A plain attribute: read once per packet by the service loop.
        self.finished = state is State.DONE or state is State.FAILED

    def start(self, now: float) -> Output:
        if self.refusal is not None:
            return self._output(
                [self._fail(Outcome.REFUSED, self.refusal.code or 0, self.refusal.message, now)],
                now,
            )
        self._flight_sent_at = now
        if self.state is State.AWAIT_OACK_ACK:
            return self._output([self._count(build_oack(self.negotiated.oack))], now)
        return self._output(self._send_window(), now)

    def receive_untrusted(self, datagram: bytes, now: float) -> Output:
        """A datagram from the peer's transfer ID. Bad or unexpected ones are counted and ignored."""
        self.stats.packets_received += 1
        if len(datagram) == 4 and datagram[:2] == _ACK_OPCODE and self._state is State.SENDING:
            # The packet of nearly every exchange, parsed as parse_packet_untrusted would.
            return self._output(self._on_ack_block(int.from_bytes(datagram[2:], "big"), now), now)
        try:
            packet = parse_packet_untrusted(datagram)
        except BadPacket as exc:
            return self._ignore(exc.reason)
        handler = _SERVER_TRANSITIONS.get((self.state, type(packet)))
        if handler is None:
            return self._ignore(f"{type(packet).__name__.lower()}_in_{self.state.value}")
        return self._output(handler(self, packet, now), now)

    def timeout(self, now: float) -> Output:
        """Call when ``now`` has reached :attr:`deadline`."""
        if self.finished or self.deadline is None or now < self.deadline:
            return Output([], self.deadline)
        if self._retries_left <= 0:
            message = f"timed out after {self._limits.retries} retransmissions"
            return self._output(
                [self._fail(Outcome.TIMED_OUT, ErrorCode.NOT_DEFINED, message, now)], now
            )
        self._retries_left -= 1
        self._flight_sent_at = None  # Karn: this flight's ACK is no RTT sample
        self._interval = min(
            (self._interval or self.negotiated.timeout) * 2, self.negotiated.timeout * BACKOFF_CAP
        )
        if self.state is State.AWAIT_OACK_ACK:
            self.stats.retransmits += 1
            return self._output([self._count(build_oack(self.negotiated.oack))], now)
        return self._output(self._send_window(), now)

    def reply_to_stray(self) -> bytes:
        """RFC 1350 §4: a packet from another port gets ERROR 5; this transfer goes on."""
        return build_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")

    def close(self) -> None:
        self._source.close()
        self._cache.clear()
        self._datagrams = None

    # -- transitions (referenced from _SERVER_TRANSITIONS) --

    def _on_oack_ack(self, packet: Packet, now: float) -> list[bytes]:
        assert isinstance(packet, Ack)
        if packet.block != 0:
            self._ignore("ack_before_oack_ack")
            return []
        self.state = State.SENDING
        self._progress(now)
        return self._send_window()

    def _on_data_ack(self, packet: Packet, now: float) -> list[bytes]:
        assert isinstance(packet, Ack)
        return self._on_ack_block(packet.block, now)

    def _on_ack_block(self, wire_block: int, now: float) -> list[bytes]:
        # Map the 16-bit number onto the one block in [base-1, sent] it can mean.
        base = self._base
        block = base - 1 + ((wire_block - (base - 1)) & 0xFFFF)
        if block == base - 1:
            self.stats.duplicate_acks += 1
            return []
        if block > self._sent:
            self._ignore("ack_outside_window")
            return []
        if self._cache:
            for acked in range(base, block + 1):
                self._cache.pop(acked, None)
        self._base = block + 1
        self._progress(now)
        if block == self._last:
            self.state = State.DONE
            self.outcome = Outcome.COMPLETED
            self.stats.finished = now
            self.close()
            return []
        return self._send_window()

    def _on_error_after_oack(self, packet: Packet, now: float) -> list[bytes]:
        assert isinstance(packet, Error)
        if packet.code == ErrorCode.OPTION_REFUSED:
            self.state = State.DONE
            self.outcome = Outcome.PROBED
            self.stats.finished = now
            self.close()
            return []
        return self._on_peer_error(packet, now)

    def _on_peer_error(self, packet: Packet, now: float) -> list[bytes]:
        assert isinstance(packet, Error)
        self.state = State.FAILED
        self.outcome = Outcome.PEER_ERROR
        self.error = f"peer error {packet.code}: {packet.message}"
        self.stats.finished = now
        self.close()
        return []

    # -- helpers --

    def _progress(self, now: float) -> None:
        self._retries_left = self._limits.retries
        floor = self._floor
        flight_sent_at = self._flight_sent_at
        if flight_sent_at is None:
            # Karn: keep the backed-off interval until a clean sample arrives.
            self._interval = max(self._interval, floor)
        else:
            sample = now - flight_sent_at
            srtt = self._srtt
            if srtt is None:
                srtt, self._rttvar = sample, sample / 2
            else:
                self._rttvar = 0.75 * self._rttvar + 0.25 * abs(srtt - sample)
                srtt = 0.875 * srtt + 0.125 * sample
            self._srtt = srtt
            self._interval = min(max(srtt + 4 * self._rttvar, floor), floor * BACKOFF_CAP)
        self._flight_sent_at = now  # the next flight leaves now

    def _block(self, number: int) -> bytes:
        cached = self._cache.get(number)
        if cached is not None:
            return cached
        # Blocks are read in order: the window only ever asks for the next one.
        assert number == self._read + 1
        payload = self._source.read(self.negotiated.blksize)
        self._read = number
        if len(payload) < self.negotiated.blksize:
            self._last = number
        self._cache[number] = payload
        return payload

    def _send_window(self) -> list[bytes]:
        datagrams = self._datagrams
        if datagrams is not None:
            # Prebuilt: blocks base .. min(base + windowsize - 1, last).
            base = self._base
            last = len(datagrams)
            end = base + self._windowsize - 1
            if end >= last:
                end = last
                payload_bytes = (last - base) * self._blksize + len(datagrams[-1]) - 4
            else:
                payload_bytes = (end - base + 1) * self._blksize
            out = [datagrams[base - 1]] if end == base else datagrams[base - 1 : end]
            stats = self.stats
            sent = self._sent
            if base <= sent:
                stats.retransmits += (sent if sent < end else end) - base + 1
            count = end - base + 1
            stats.blocks_sent += count
            stats.packets_sent += count
            stats.bytes_sent += payload_bytes
            if end > sent:
                self._sent = end
            return out
        out = []
        end = self._base + self.negotiated.windowsize
        number = self._base
        while number < end and (self._last is None or number <= self._last):
            payload = self._block(number)
            if number <= self._sent:
                self.stats.retransmits += 1
            self.stats.blocks_sent += 1
            self.stats.bytes_sent += len(payload)
            out.append(self._count(build_data(number, payload)))
            number += 1
        self._sent = max(self._sent, number - 1)
        return out

    def _fail(self, outcome: Outcome, code: int, message: str, now: float) -> bytes:
        self.state = State.FAILED
        self.outcome = outcome
        self.error = message
        self.stats.finished = now
        self.close()
        return self._count(build_error(code, message))

    def _count(self, datagram: bytes) -> bytes:
        self.stats.packets_sent += 1
        return datagram

    def _ignore(self, reason: str) -> Output:
        self.stats.ignored[reason] = self.stats.ignored.get(reason, 0) + 1
        return Output([], self.deadline)

    def _output(self, datagrams: list[bytes], now: float) -> Output:
        if self.finished:
            self.deadline = None
        elif datagrams:
            self.deadline = now + (self._interval or self._floor)
        return Output(datagrams, self.deadline)


_Handler = Callable[[ReadTransfer, Packet, float], list[bytes]]

_SERVER_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.AWAIT_OACK_ACK, Ack): ReadTransfer._on_oack_ack,
    (State.AWAIT_OACK_ACK, Error): ReadTransfer._on_error_after_oack,
    (State.SENDING, Ack): ReadTransfer._on_data_ack,
    (State.SENDING, Error): ReadTransfer._on_peer_error,
}
