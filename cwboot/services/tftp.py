"""TFTP service: a thin trio loop around cwboot.protocol.tftp's :class:`ReadTransfer`.

One listener socket takes RRQs; each accepted request gets its own task and
its own UDP socket (its transfer ID, RFC 1350 §4), bound to the address the
RRQ was sent to so replies leave from the address the client talked to.
Admission is bounded: ``max_transfers`` run at once and
``max_transfers_per_peer`` per client address (running and waiting). An RRQ
over ``max_transfers`` waits in a FIFO queue (at most ``max_queued``) and
starts when a transfer ends: a dropped RRQ would cost a PXE ROM its retry
timer, and after a few of them the whole boot. A retransmitted RRQ of a
waiting request (same address and port) is a duplicate and keeps its place; a
waiting request whose client has not been heard for ``queue_timeout`` seconds
has retried from another port or gone, and is forgotten. An RRQ over the
per-peer cap, or with the queue full, is dropped (not refused): firmware
retries an unanswered RRQ, but gives up on ERROR.

Counted (``TftpStats.drops``, one key per reason): every datagram the
listener cannot use, every refusal, every stray or ignored packet on a
transfer port, every failed send. Each finished transfer leaves a
:class:`TransferRecord` (packets, retransmits, blksize, windowsize, duration,
outcome) in ``TftpStats.recent``.

Content: ``generated(filename, peer)`` first (bytes or a ResponseSource, or
None to fall through), then the root folder, then Debian's iPXE loaders when
the root lacks them.

Run standalone (used by the interop tests and the benchmark)::

    python -m cwboot.services.tftp --root DIR --listen 10.0.0.1 --port 69

prints ``{"address": ..., "port": ...}`` once bound and, on SIGTERM/SIGINT,
one JSON line with the statistics.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import heapq
import itertools
import json
import logging
import math
import select
import signal
import socket as _socket
import struct
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cwboot.config import ConfigError, TftpConfig, tftp_from_settings
from cwboot.protocol.tftp import (
    DEBIAN_IPXE_LOADERS,
    MIN_BLKSIZE,
    BadPacket,
    BytesSource,
    ClientState,
    ContentCache,
    ErrorCode,
    Limits,
    Outcome,
    ReadClient,
    ReadRequest,
    ReadTransfer,
    ResponseSource,
    TransferStats,
    build_error,
    open_in_root_untrusted,
    parse_request_untrusted,
)

log = logging.getLogger(__name__)

# Linux <netinet/in.h>; Python's socket module does not export IP_PKTINFO.
IP_PKTINFO = getattr(_socket, "IP_PKTINFO", 8)
# struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
IN_PKTINFO = struct.Struct("=i4s4s")
# Linux <netinet/in.h>: the path MTU of a connected socket.
IP_MTU = getattr(_socket, "IP_MTU", 14)
# IPv4 header (20, no options) + UDP header (8) + TFTP DATA header (4).
TFTP_DATA_OVERHEAD = 32
# Large enough to read (and then refuse) any UDP datagram whole.
MAX_DATAGRAM = 65536
RECENT_TRANSFERS = 1000
# Scanning the whole queue for silent clients costs O(max_queued): not on every RRQ of a flood.
SWEEP_AT_MOST_EVERY = 0.5
# Batches of ready transfer sockets the pump serves before it lets other tasks run.
PUMP_ROUNDS = 4

Peer = tuple[str, int]
Generated = Callable[[str, Peer], bytes | ResponseSource | None]


@dataclass(frozen=True)
class TransferRecord:
    peer: Peer
    filename: str
    outcome: str
    error: str
    stats: TransferStats


@dataclass
class TftpStats:
    requests: int = 0
    active: int = 0
    # Requests waiting for a transfer slot now, and how many ever had to wait.
    waiting: int = 0
    queued: int = 0
    # outcome (completed, probed, peer_error, timed_out, refused) -> count
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    # reason -> datagrams dropped or refused
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    packets_sent: int = 0
    retransmits: int = 0
    bytes_sent: int = 0
    recent: collections.deque[TransferRecord] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_TRANSFERS)
    )

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "active": self.active,
            "waiting": self.waiting,
            "queued": self.queued,
            "outcomes": dict(self.outcomes),
            "drops": dict(self.drops),
            "packets_sent": self.packets_sent,
            "retransmits": self.retransmits,
            "bytes_sent": self.bytes_sent,
            "recent": [
                {
                    "peer": list(r.peer),
                    "filename": r.filename,
                    "outcome": r.outcome,
                    "error": r.error,
                    **dataclasses.asdict(r.stats),
                    "duration": r.stats.duration,
                }
                for r in self.recent
            ],
        }


@dataclass
class _Waiting:
    """An admitted RRQ waiting for a transfer slot."""

    request: ReadRequest
    local: str  # the address the RRQ was sent to
    heard: float  # when its client last sent this RRQ


@dataclass
class TftpServer:
    address: str
    port: int
    stats: TftpStats


class _Running:
    """A transfer the pump drives: its socket (transfer ID), its core, what waits to be sent."""

    __slots__ = ("done", "error", "fd", "peer", "pending", "sock", "timer", "timer_at", "transfer")

    def __init__(self, sock: _socket.socket, transfer: ReadTransfer, peer: Peer) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.transfer = transfer
        self.peer = peer
        self.done = trio.Event()
        self.error: OSError | None = None
        # Datagrams (and where to) the socket buffer had no room for yet, in order.
        self.pending: collections.deque[tuple[bytes, Peer]] = collections.deque()
        # Its live entry in the pump's timer heap (sequence number, when), if any.
        self.timer = -1
        self.timer_at = math.inf


class _Pump:
    """Every running transfer's packets, from one task.

    A task per transfer waiting on its own socket costs, per DATA packet of a
    lockstep transfer, a failed recvfrom, a cancel scope and two trips
    through trio's scheduler. The pump instead keeps the transfer sockets in
    an epoll set of its own, waits (through trio) for that set to become
    readable, and then serves every ready socket: recvfrom, the sans-IO core,
    sendto. In a storm one wake-up serves many packets.

    Retransmission deadlines live in a heap on trio's clock (so a MockClock
    drives them as before), one live entry per transfer: a packet that moves
    a transfer's deadline later leaves the entry alone, and an entry that
    pops before its transfer's deadline is put back at that deadline. A
    datagram the socket has no room for waits in the transfer's ``pending``
    queue (the socket is then watched for writability, not for ACKs, as the
    old per-transfer loop waited in its send before reading again).

    Each transfer keeps its own task for its lifetime (open, admission slot,
    record), parked on ``_Running.done`` while the pump moves its packets.
    """

    def __init__(self, service: _Service) -> None:
        self.service = service
        self.epoll = select.epoll()
        self.running: dict[int, _Running] = {}  # by socket fd
        self.timers: list[tuple[float, int, _Running]] = []
        self.sequence = itertools.count()
        # The cancel scope of the timer task's current wait, so an earlier deadline can shorten it.
        self.scope: trio.CancelScope | None = None

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.epoll.fileno())
        self.epoll.close()

    async def serve(self, sock: _socket.socket, transfer: ReadTransfer, peer: Peer) -> None:
        """Run ``transfer`` on ``sock`` to its end; OSError if reading its content failed."""
        out = transfer.start(trio.current_time())
        running = _Running(sock, transfer, peer)
        self.running[running.fd] = running
        self.epoll.register(running.fd, select.EPOLLIN)
        try:
            self.send(running, out.datagrams, peer)
            self.settle(running)
            await running.done.wait()
        finally:
            self.forget(running)
        if running.error is not None:
            raise running.error

    async def run(self) -> None:
        """Serve ready sockets: one trip through trio per batch, no cancel scope (timers run apart)."""
        epoll_fd = self.epoll.fileno()
        poll = self.epoll.poll
        running_by_fd = self.running
        while True:
            await trio.lowlevel.wait_readable(epoll_fd)
            # ACKs that arrived while a batch was served are served at once (a
            # syscall, not a trip through trio), for a bounded number of rounds.
            for _ in range(PUMP_ROUNDS):
                ready = poll(0)
                if not ready:
                    break
                for fd, _ in ready:
                    running = running_by_fd.get(fd)
                    if running is None:
                        continue
                    if running.pending:
                        self.flush(running)
                    else:
                        self.receive(running)

    async def run_timers(self) -> None:
        """Retransmit at the transfers' deadlines (a task of its own: it wakes far less often)."""
        while True:
            self.fire_timers(trio.current_time())
            with trio.CancelScope(deadline=self.timers[0][0] if self.timers else math.inf) as scope:
                self.scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self.scope = None

    def receive(self, running: _Running) -> None:
        try:
            data, sender = running.sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError as exc:
            self.service.stats.drops[f"recv_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"] += 1
            return
        transfer = running.transfer
        if sender != running.peer:
            # RFC 1350 §4: answer the stranger with ERROR 5, keep serving the peer.
            self.service.stats.drops["stray_transfer_id"] += 1
            self.send(running, [transfer.reply_to_stray()], sender[:2])
            return
        try:
            out = transfer.receive_untrusted(data, trio.current_time())
        except OSError as exc:  # reading the content failed (EIO...): end this transfer only
            self.fail(running, exc)
            return
        if out.datagrams:
            self.send(running, out.datagrams, running.peer)
            self.settle(running)
        elif transfer.finished:
            self.settle(running)

    def fire_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, sequence, running = heapq.heappop(timers)
            if sequence != running.timer:
                continue  # replaced by an earlier entry, or the transfer ended
            running.timer, running.timer_at = -1, math.inf
            if running.pending:
                continue  # re-armed once its datagrams are out
            transfer = running.transfer
            if transfer.deadline is None:
                continue
            if transfer.deadline > now:
                self.arm(running)
                continue
            try:
                out = transfer.timeout(now)
            except OSError as exc:
                self.fail(running, exc)
                continue
            self.send(running, out.datagrams, running.peer)
            self.settle(running)

    def arm(self, running: _Running) -> None:
        deadline = running.transfer.deadline
        if deadline is None or deadline >= running.timer_at:
            return  # the live entry pops first and re-arms
        sequence = next(self.sequence)
        running.timer, running.timer_at = sequence, deadline
        heapq.heappush(self.timers, (deadline, sequence, running))
        if self.scope is not None and deadline < self.scope.deadline:
            self.scope.deadline = deadline

    def send(self, running: _Running, datagrams: list[bytes], to: Peer) -> None:
        if running.pending:  # keep the order: behind what already waits
            running.pending.extend((datagram, to) for datagram in datagrams)
            return
        sendto = running.sock.sendto
        for i, datagram in enumerate(datagrams):
            try:
                sendto(datagram, to)
            except BlockingIOError:
                running.pending.extend((later, to) for later in datagrams[i:])
                self.epoll.modify(running.fd, select.EPOLLOUT)
                return
            except OSError as exc:
                self.service.stats.drops[
                    f"send_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"
                ] += 1

    def flush(self, running: _Running) -> None:
        pending = running.pending
        while pending:
            datagram, to = pending[0]
            try:
                running.sock.sendto(datagram, to)
            except BlockingIOError:
                return
            except OSError as exc:
                self.service.stats.drops[
                    f"send_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"
                ] += 1
            pending.popleft()
        self.epoll.modify(running.fd, select.EPOLLIN)
        self.settle(running)

    def settle(self, running: _Running) -> None:
        """After sending: end a finished transfer, or (re)arm its retransmission timer."""
        if running.pending:
            return
        if running.transfer.finished:
            self.end(running)
        else:
            self.arm(running)

    def fail(self, running: _Running, error: OSError) -> None:
        running.error = error
        self.end(running)

    def end(self, running: _Running) -> None:
        self.forget(running)
        running.done.set()

    def forget(self, running: _Running) -> None:
        running.timer = -1
        if self.running.get(running.fd) is running:
            del self.running[running.fd]
            self.epoll.unregister(running.fd)


class _Service:
    def __init__(
        self,
        config: TftpConfig,
        root: Path,
        generated: Generated | None,
        defaults: Mapping[str, Path],
    ) -> None:
        self.config = config
        self.root = root
        self.generated = generated
        self.defaults = defaults
        self.limits = Limits(
            max_blksize=config.max_blksize,
            max_windowsize=config.max_windowsize,
            timeout=config.timeout,
            retries=config.retries,
        )
        self.stats = TftpStats()
        # Transfers running or waiting, per client address.
        self.per_peer: collections.Counter[str] = collections.Counter()
        self.active: set[Peer] = set()
        # FIFO of requests over max_transfers, oldest first.
        self.waiting: collections.OrderedDict[Peer, _Waiting] = collections.OrderedDict()
        self.nursery: trio.Nursery | None = None
        self.swept_at = -math.inf
        # Files read once and shared by every transfer of them (a storm fetches one loader).
        self.cache = ContentCache()
        self.pump = _Pump(self)

    def open_source_untrusted(self, request: ReadRequest, peer: Peer) -> ResponseSource:
        if self.generated is not None:
            try:
                content = self.generated(request.filename, peer)
            except Exception as exc:  # a bug in generated content must not stop the service
                log.exception("tftp: generating %r for %s failed", request.filename, peer)
                raise BadPacket(
                    "generator_failed", ErrorCode.NOT_DEFINED, "internal error"
                ) from exc
            if isinstance(content, bytes):
                return BytesSource(content)
            if content is not None:
                return content
        return open_in_root_untrusted(self.root, request.filename, self.defaults, self.cache)

    def admit(self, request: ReadRequest, peer: Peer, local: str, now: float) -> None:
        """Start a transfer for ``peer``, queue it, or count why the RRQ is dropped."""
        if peer in self.active:
            self.stats.drops["duplicate_request"] += 1  # our OACK/DATA is on its way
            return
        waiting = self.waiting.get(peer)
        if waiting is not None:
            waiting.heard = now  # the client is still there: it keeps its place
            self.stats.drops["duplicate_request"] += 1
            return
        if self.per_peer[peer[0]] >= self.config.max_transfers_per_peer:
            self.stats.drops["over_peer_cap"] += 1
            return
        if len(self.active) < self.config.max_transfers and not self.waiting:
            self.per_peer[peer[0]] += 1
            self.begin(request, peer, local)
            return
        if len(self.waiting) >= self.config.max_queued and now - self.swept_at >= SWEEP_AT_MOST_EVERY:
            self.forget_silent(now)
        if len(self.waiting) >= self.config.max_queued:
            self.stats.drops["queue_full"] += 1
            return
        self.per_peer[peer[0]] += 1
        self.waiting[peer] = _Waiting(request, local, now)
        self.stats.queued += 1
        self.stats.waiting = len(self.waiting)

    def begin(self, request: ReadRequest, peer: Peer, local: str) -> None:
        assert self.nursery is not None
        self.active.add(peer)
        self.stats.active += 1
        self.nursery.start_soon(self.transfer, request, peer, local)

    def release(self, peer: Peer) -> None:
        """A transfer ended: free its slot, and hand it to the oldest waiting request."""
        self.active.discard(peer)
        self.stats.active -= 1
        self.leave(peer)
        if trio.current_effective_deadline() == -math.inf:
            return  # cancelled: the service is stopping, nothing more starts
        now = trio.current_time()
        while self.waiting and len(self.active) < self.config.max_transfers:
            waiting_peer, waiting = self.waiting.popitem(last=False)
            if now - waiting.heard > self.config.queue_timeout:
                self.stats.drops["queue_timeout"] += 1
                self.leave(waiting_peer)
            else:
                self.begin(waiting.request, waiting_peer, waiting.local)
        self.stats.waiting = len(self.waiting)

    def forget_silent(self, now: float) -> None:
        """Drop waiting requests whose client has not been heard for ``queue_timeout`` s."""
        self.swept_at = now
        silent = [p for p, w in self.waiting.items() if now - w.heard > self.config.queue_timeout]
        for peer in silent:
            del self.waiting[peer]
            self.stats.drops["queue_timeout"] += 1
            self.leave(peer)
        self.stats.waiting = len(self.waiting)

    def leave(self, peer: Peer) -> None:
        self.per_peer[peer[0]] -= 1
        if not self.per_peer[peer[0]]:
            del self.per_peer[peer[0]]

    async def forget_silent_periodically(self) -> None:
        """Keep the queue free of requests nobody waits for, even while no slot frees."""
        while True:
            await trio.sleep(max(self.config.queue_timeout / 2, SWEEP_AT_MOST_EVERY))
            if self.waiting:
                self.forget_silent(trio.current_time())

    async def send(self, sock: trio.socket.SocketType, datagram: bytes, peer: Peer) -> None:
        try:
            await sock.sendto(datagram, peer)
        except OSError as exc:
            self.stats.drops[f"send_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"] += 1

    async def listen(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        nursery.start_soon(self.forget_silent_periodically)
        nursery.start_soon(self.pump.run)
        nursery.start_soon(self.pump.run_timers)
        while True:
            try:
                data, ancillary, _, address = await sock.recvmsg(
                    MAX_DATAGRAM, _socket.CMSG_SPACE(IN_PKTINFO.size)
                )
            except OSError as exc:
                self.stats.drops[f"recv_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"] += 1
                continue
            self.stats.requests += 1
            host, port = typing.cast(Peer, address)
            peer: Peer = (host, port)
            try:
                request = parse_request_untrusted(data)
            except BadPacket as exc:
                self.stats.drops[exc.reason] += 1
                if exc.code is not None:
                    await self.send(sock, build_error(exc.code, exc.message), peer)
                continue
            local = _destination_address(ancillary) or self.config.listen
            self.admit(request, peer, local, trio.current_time())

    async def transfer(self, request: ReadRequest, peer: Peer, local: str) -> None:
        now = trio.current_time()
        try:
            with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                try:
                    sock.bind((local, 0))
                except OSError:  # e.g. the RRQ was sent to a broadcast address
                    sock.bind((self.config.listen, 0))
                try:
                    source = self.open_source_untrusted(request, peer)
                except BadPacket as exc:
                    self.stats.drops[exc.reason] += 1
                    self.stats.outcomes[Outcome.REFUSED.value] += 1
                    await self.send_all(sock, [build_error(exc.code or 0, exc.message)], peer)
                    return
                limits = dataclasses.replace(self.limits, max_blksize=self.path_blksize(peer))
                transfer = ReadTransfer(request, source, limits=limits, now=now)
                try:
                    await self.pump.serve(sock, transfer, peer)
                except OSError as exc:  # reading the file failed (EIO...): end this transfer only
                    self.stats.drops[
                        f"read_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"
                    ] += 1
                finally:
                    transfer.close()
                    self.finish(transfer, peer)
        finally:
            self.release(peer)

    def path_blksize(self, peer: Peer) -> int:
        """blksize that fits the route's MTU to ``peer`` (RFC 2348 §2 asks to avoid IP fragmentation)."""
        try:
            with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as probe:
                probe.connect(peer)
                mtu = probe.getsockopt(_socket.IPPROTO_IP, IP_MTU)
        except OSError:
            return self.config.max_blksize
        return max(MIN_BLKSIZE, min(self.config.max_blksize, mtu - TFTP_DATA_OVERHEAD))

    async def send_all(self, sock: _socket.socket, datagrams: list[bytes], peer: Peer) -> None:
        """Send with plain non-blocking sendto calls, then one checkpoint (a refusal's ERROR)."""
        for datagram in datagrams:
            while True:
                try:
                    sock.sendto(datagram, peer)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError as exc:
                    self.stats.drops[
                        f"send_failed_{errno.errorcode.get(exc.errno or 0, 'error')}"
                    ] += 1
                break
        await trio.lowlevel.checkpoint()

    def finish(self, transfer: ReadTransfer, peer: Peer) -> None:
        stats = transfer.stats
        if stats.finished is None:  # cancelled (service shutting down)
            stats.finished = trio.current_time()
        outcome = transfer.outcome.value if transfer.outcome else "cancelled"
        self.stats.outcomes[outcome] += 1
        if transfer.refusal is not None:
            self.stats.drops[transfer.refusal.reason] += 1
        for reason, count in stats.ignored.items():
            self.stats.drops[reason] += count
        self.stats.packets_sent += stats.packets_sent
        self.stats.retransmits += stats.retransmits
        self.stats.bytes_sent += stats.bytes_sent
        self.stats.recent.append(
            TransferRecord(peer, transfer.request.filename, outcome, transfer.error, stats)
        )
        log.debug("tftp %s %s %s: %s", peer, transfer.request.filename, outcome, stats)


def _destination_address(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    for level, kind, data in ancillary:
        if level == _socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            _, _, destination = IN_PKTINFO.unpack_from(data)
            return _socket.inet_ntoa(destination)
    return None


async def serve_tftp(
    config: TftpConfig,
    *,
    root: Path | str,
    task_status: trio.TaskStatus[TftpServer] = trio.TASK_STATUS_IGNORED,
    generated: Generated | None = None,
    defaults: Mapping[str, Path] = DEBIAN_IPXE_LOADERS,
) -> None:
    """Serve read requests until cancelled; ``task_status.started(TftpServer)`` once bound.

    ``root`` is the folder served (it may be missing: then only ``generated``
    and ``defaults`` answer). Port 0 in ``config`` binds a free port; the real
    one is in the TftpServer handed to ``task_status``.
    """
    service = _Service(config, Path(root), generated, defaults)
    with contextlib.closing(service.pump), trio.socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as sock:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(_socket.IPPROTO_IP, IP_PKTINFO, 1)
        await sock.bind((config.listen, config.port))
        address, port = sock.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            task_status.started(TftpServer(address, port, service.stats))
            await service.listen(sock, nursery)


@dataclass
class FetchResult:
    data: bytes
    ok: bool
    error: str
    retransmits: int
    blksize: int
    windowsize: int
    tsize: int | None


async def fetch_tftp(
    address: str,
    port: int,
    filename: str,
    *,
    options: dict[str, str] | None = None,
    timeout: float = 1.0,
    retries: int = 5,
    dally: float = 0.0,
    bind: str = "0.0.0.0",
) -> FetchResult:
    """Read one file with the sans-IO ReadClient (tests and bench/bench_tftp.py's load).

    The first reply fixes the server's transfer ID; packets from other ports
    are ignored. ``dally`` keeps answering a repeated final block that long
    after the end (RFC 1350 §6).
    """
    client = ReadClient(filename, options=options, timeout=timeout, retries=retries)
    server: Peer | None = None
    with trio.socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as sock:
        await sock.bind((bind, 0))
        out = client.start(trio.current_time())
        await sock.sendto(out.datagrams[0], (address, port))
        linger_until = math.inf
        while True:
            if client.finished and linger_until == math.inf:
                linger_until = trio.current_time() + dally
            deadline = linger_until if client.finished else (client.deadline or math.inf)
            data = None
            with trio.move_on_at(deadline):
                data, sender = await sock.recvfrom(MAX_DATAGRAM)
            if data is None:
                if client.finished:
                    break
                out = client.timeout(trio.current_time())
            elif server is not None and sender[:2] != server:
                continue
            else:
                server = sender[:2]
                out = client.receive_untrusted(data, trio.current_time())
            for datagram in out.datagrams:
                await sock.sendto(datagram, server or (address, port))
    return FetchResult(
        bytes(client.data),
        client.state is ClientState.DONE,
        client.error,
        client.retransmits,
        client.blksize,
        client.windowsize,
        client.tsize,
    )


async def _main(args: argparse.Namespace) -> None:
    try:
        config = tftp_from_settings(args.listen, args.port, args.set)
    except ConfigError as exc:
        raise SystemExit(f"cwboot.services.tftp: {exc}") from None
    async with trio.open_nursery() as nursery:
        server: TftpServer = await nursery.start(
            lambda task_status: serve_tftp(config, root=args.root, task_status=task_status)
        )
        print(json.dumps({"address": server.address, "port": server.port}), flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    summary = server.stats.as_dict()
    if not args.recent:
        summary.pop("recent")
    print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cwboot.services.tftp", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a TftpConfig field"
    )
    parser.add_argument(
        "--recent", action="store_true", help="include per-transfer records in the summary"
    )
    trio.run(_main, parser.parse_args(argv))


if __name__ == "__main__":
    main()
