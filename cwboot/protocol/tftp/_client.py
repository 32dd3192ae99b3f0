"""The client side of a read, sans-IO: used by the tests' fake network and the load benchmark.

States: REQUESTED (RRQ sent) -> RECEIVING (OACK or DATA seen) -> DONE / FAILED.
RFC 7440 receiver rules: ACK after every ``windowsize`` in-order blocks, on
the final (short) block, and once when a gap shows (ACK of the last in-order
block, so the server restarts the window there). A repeat of the newest
block means the server timed out waiting for our ACK: we ACK it again. After
DONE the client keeps re-ACKing the final block (RFC 1350 §6 "dallying") for
as long as the caller keeps feeding it.
"""

from __future__ import annotations

import enum

from cwboot.protocol.tftp._options import DEFAULT_BLKSIZE
from cwboot.protocol.tftp._transfer import BACKOFF_CAP, Output
from cwboot.protocol.tftp._wire import (
    BadPacket,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    build_ack,
    build_error,
    build_request,
    parse_packet_untrusted,
)


class ClientState(enum.Enum):
    REQUESTED = "requested"
    RECEIVING = "receiving"
    DONE = "done"
    FAILED = "failed"


class ReadClient:
    def __init__(
        self,
        filename: str,
        *,
        options: dict[str, str] | None = None,
        timeout: float = 1.0,
        retries: int = 5,
    ) -> None:
        self.filename = filename
        self.options = dict(options or {})
        self.state = ClientState.REQUESTED
        self.data = bytearray()
        self.error = ""
        self.tsize: int | None = None
        self.blksize = DEFAULT_BLKSIZE
        self.windowsize = 1
        self.retransmits = 0
        self.deadline: float | None = None
        self._timeout = timeout
        self._retries = retries
        self._retries_left = retries
        self._interval = timeout  # doubles per timeout up to 4x, like the server's
        self._received = 0  # blocks received in order, not wrapped
        self._acked = 0
        self._gap_acked = -1
        self._last_sent = b""

    @property
    def finished(self) -> bool:
        return self.state in (ClientState.DONE, ClientState.FAILED)

    def start(self, now: float) -> Output:
        return self._send(build_request(self.filename, "octet", self.options), now)

    def receive_untrusted(self, datagram: bytes, now: float) -> Output:
        try:
            packet = parse_packet_untrusted(datagram)
        except BadPacket:
            return Output([], self.deadline)
        if isinstance(packet, Error):
            if self.state is not ClientState.DONE:
                self.state = ClientState.FAILED
                self.error = f"error {packet.code}: {packet.message}"
                self.deadline = None
            return Output([], self.deadline)
        if isinstance(packet, OptionAck) and self.state is ClientState.REQUESTED:
            return self._on_oack(packet, now)
        if isinstance(packet, Data) and self.state is not ClientState.FAILED:
            out = self._on_data(packet, now)
            if self.finished:
                self.deadline = None
            return Output(out.datagrams, self.deadline)
        return Output([], self.deadline)

    def timeout(self, now: float) -> Output:
        if self.finished or self.deadline is None or now < self.deadline:
            return Output([], self.deadline)
        if self._retries_left <= 0:
            self.state = ClientState.FAILED
            self.error = "timed out"
            self.deadline = None
            return Output([], None)
        self._retries_left -= 1
        self._interval = min(self._interval * 2, self._timeout * BACKOFF_CAP)
        self.retransmits += 1
        return self._send(self._last_sent, now)

    def _on_oack(self, packet: OptionAck, now: float) -> Output:
        for name, value in packet.options.items():
            if name not in self.options or not value.isdigit():
                return self._abort(f"unrequested or bad option {name!r} in OACK", now)
            if name == "blksize":
                self.blksize = int(value)
            elif name == "windowsize":
                self.windowsize = int(value)
            elif name == "tsize":
                self.tsize = int(value)
        self.state = ClientState.RECEIVING
        return self._ack(0, now)

    def _on_data(self, packet: Data, now: float) -> Output:
        if self.state is ClientState.REQUESTED:
            # DATA 1 without an OACK: the server ignored our options.
            self.state = ClientState.RECEIVING
        expected = (self._received + 1) & 0xFFFF
        if packet.block == expected and self.state is ClientState.RECEIVING:
            self._received += 1
            self.data += packet.payload
            if len(packet.payload) < self.blksize:
                self.state = ClientState.DONE
                return self._ack(self._received, now)
            if self._received - self._acked >= self.windowsize:
                return self._ack(self._received, now)
            return Output([], self.deadline)
        if packet.block == self._received & 0xFFFF and self._acked == self._received:
            # The server resent the end of a window we acknowledged: our ACK was
            # lost. (A duplicate from mid-window gets no ACK, or it would
            # restart the server's window for nothing.)
            return self._ack(self._received, now)
        ahead = 0 < ((packet.block - expected) & 0xFFFF) < 0x8000
        if ahead and self._gap_acked != self._received and self.state is ClientState.RECEIVING:
            self._gap_acked = self._received
            return self._ack(self._received, now)
        return Output([], self.deadline)

    def _ack(self, block: int, now: float) -> Output:
        self._acked = block
        self._retries_left = self._retries
        self._interval = self._timeout
        return self._send(build_ack(block), now)

    def _abort(self, message: str, now: float) -> Output:
        self.state = ClientState.FAILED
        self.error = message
        self.deadline = None
        return Output([build_error(ErrorCode.OPTION_REFUSED, message)], None)

    def _send(self, datagram: bytes, now: float) -> Output:
        self._last_sent = datagram
        self.deadline = now + self._interval
        return Output([datagram], self.deadline)
