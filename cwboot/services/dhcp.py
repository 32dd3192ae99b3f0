"""The DHCP service: a thin loop around the codec (cwboot.protocol.dhcp) and the policy.

``serve_dhcp`` binds UDP port 67 (``dhcp.port``; and ``dhcp.proxy_port``,
4011, in proxyDHCP mode), reports ``DhcpBound`` through ``task_status`` and
then, for every datagram: parse -> decide -> build -> send. Answers come from
the in-memory lookup only; nothing awaits the store on this path.

Per datagram, ``DhcpResponder.respond`` first tries the fast path
(cwboot.policy.dhcp.FastPath: the codec's FastResponder answering from reply
templates the policy compiled for a node and request class); what it declines
takes the full path (``respond_full``: parse -> decide -> build -> send
decision), which after a reply compiles the template for the next such request.

Burst handling: the socket has a large receive buffer (``dhcp.rcvbuf_bytes``;
SO_RCVBUFFORCE when root, so it is not capped by net.core.rmem_max). The
receive loop runs in a worker thread with blocking I/O, so a burst is drained
back to back without any trio scheduler round trip per packet. With the Cython
codec it is ext/dhcp_loop.pyx (``LOOP = "native"``): recvmmsg/sendmmsg batches
of up to ``BATCH`` with the GIL released while blocked, and under sustained
traffic a ``HOLD`` (1 ms) wait after a batch that was not full, so one wake-up
and two system calls serve several datagrams; otherwise (``LOOP = "python"``)
one recvfrom and one sendto per datagram (measured with perfdhcp at 5,000
DORA/s: 60 us of server CPU per DORA that way, 101 us with a trio loop that
drained the socket in non-blocking batches after each wait_readable; see
docs/dhcp.md for the native loop's figures). The native loop also paces its
replies (``PACE``: no faster than 1.25 x the rate requests arrived, at least
``PACE_FLOOR`` per second), so a backlog is not dumped onto one relay faster
than its socket can take it. When the socket has been idle for ``POLL_INTERVAL``
the receive thread compiles fast-path templates ahead of the nodes' first
requests (``_Warmer``: every node MAC x the client classes of
``FastPath.classes``), stopping as soon as a datagram waits. The handler only reads the
lookup (plain dict reads, atomic under the GIL) and writes the counters (in
proxy mode two threads share them, so a count may rarely miss one); cancellation
stops the thread within ``POLL_INTERVAL``. Enrolment requests go back into
trio through the trio token.

Every datagram that gets no answer is counted with its reason in
``DhcpStats.dropped`` (codec errors as ``"bad packet: <why>"``, policy
``Ignore`` reasons verbatim, send errors as ``"send failed: <errno>"``).

Unknown MACs with ``dhcp.unknown_mac = "enrol"``: the MAC goes into a bounded
queue and a separate task awaits ``enrol(mac)`` (the head passes a callback
that creates the node with compare-and-swap); the client's next retry finds
the node in the cache. A MAC is enrolled once at a time. Every MAC on the
wire can ask, spoofed ones included, and each enrolment writes a store object,
so a token bucket (``dhcp.enrol_rate`` per second, ``dhcp.enrol_burst`` at
once; trio's clock) admits datagrams into that queue; the rest are counted as
``"enrol rate limited"``.

Replies whose RFC 2131 4.1 destination is "unicast to chaddr" (no ciaddr,
no broadcast flag, no relay) are broadcast instead: the service keeps no ARP
entries, and every client accepts a broadcast reply.
"""

from __future__ import annotations

import errno
import importlib
import logging
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

import trio

from cwboot.policy.dhcp import (
    BootPolicy,
    ClientClass,
    Enrol,
    FastPath,
    NodeLookup,
    Reply,
    send_decision,
)
from cwboot.policy.token_bucket import TokenBucket
from cwboot.protocol.dhcp import BadPacket, DhcpPacket, build_reply, parse_untrusted
from cwboot.protocol.dhcp import _spec as dhcp_spec
from cwboot.protocol.dhcp import backend as dhcp_backend

log = logging.getLogger(__name__)

# The receive loop: "native" (ext/dhcp_loop.pyx, built as cwboot.services._dhcp_loop_c:
# recvmmsg/sendmmsg in batches of BATCH) when the codec backend is the Cython one and the
# loop is built, else "python" (one recvfrom and one sendto per datagram).
_loop_c: Any = None
if dhcp_backend == "cython":
    try:
        _loop_c = importlib.import_module("cwboot.services._dhcp_loop_c")
    except ImportError:
        pass
LOOP = "native" if _loop_c is not None else "python"
BATCH = 32
# Native loop only: under sustained traffic, wait this long after a batch so the next
# recvmmsg takes several datagrams (see ext/dhcp_loop.pyx); 0 turns it off.
HOLD = 0.001
# Native loop only: replies go out no faster on average than PACE x the rate at which
# requests arrived (kernel receive timestamps), and never slower than PACE_FLOOR per second,
# so a backlog is not answered faster than a relay's socket can take it (see
# ext/dhcp_loop.pyx); PACE = 0 turns it off.
PACE = 1.25
PACE_FLOOR = 20_000.0

# Idle warming: (MAC, client class) pairs compiled between two looks at the socket.
WARM_CHUNK = 32

# Unknown MACs waiting for the enrol task; more are dropped (counted) until it catches up.
ENROL_QUEUE = 1024
MAX_DATAGRAM = 4096
POLL_INTERVAL = 0.2
# Linux <asm-generic/socket.h>; the socket module does not export it.
SO_RCVBUFFORCE = 33


@dataclass
class DhcpStats:
    """Counters of one running service."""

    received: int = 0
    replied: Counter[str] = field(default_factory=Counter)  # by message type name
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    warnings: Counter[str] = field(default_factory=Counter)  # replied, but worth noting
    enrolled: int = 0
    enrol_failed: int = 0
    # Of ``replied``, how many the fast path (compiled templates) answered.
    fast: int = 0
    # Templates compiled ahead of a node's first request (idle warming), and completed sweeps.
    warmed: int = 0
    warm_sweeps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "replied": dict(self.replied),
            "dropped": dict(self.dropped),
            "warnings": dict(self.warnings),
            "enrolled": self.enrolled,
            "enrol_failed": self.enrol_failed,
            "fast": self.fast,
            "warmed": self.warmed,
            "warm_sweeps": self.warm_sweeps,
        }


@dataclass(frozen=True)
class DhcpBound:
    """What ``serve_dhcp`` reports once listening."""

    address: str
    port: int
    # proxyDHCP boot-server port, 0 when not in proxy mode.
    proxy_port: int
    stats: DhcpStats


_TYPE_NAMES = {2: "offer", 5: "ack", 6: "nak"}
_REPLY_TYPE = dhcp_spec.OFF_REPLY_TYPE


class DhcpResponder:
    """The per-datagram work, without sockets: bytes in, (bytes, destination) out."""

    def __init__(
        self,
        policy: BootPolicy,
        lookup: NodeLookup,
        stats: DhcpStats,
        *,
        enrol_limit: TokenBucket | None = None,
        now: Callable[[], float] = time.monotonic,
        fast: bool = True,
    ) -> None:
        self.policy = policy
        self.lookup = lookup
        self.stats = stats
        # Admits unknown MACs into the enrol queue (None: no limit); ``now`` is its clock
        # (serve_dhcp passes trio's, readable from the receive thread).
        self.enrol_limit = enrol_limit
        self.now = now
        # MACs for the enrol task (appended by the receive thread); None without an enrol callback.
        self.to_enrol: deque[str] | None = None
        # The policy's answers compiled into templates (authoritative mode): the codec's
        # one-call respond path tries them first; what it declines takes the full path.
        self.fast: FastPath | None = FastPath(policy, lookup) if fast and not policy.proxy else None
        self._fast_respond = self.fast.respond if self.fast is not None else None

    def respond(
        self, data: bytes, source: tuple[str, int], boot_server: bool
    ) -> tuple[bytes, tuple[str, int]] | None:
        """One datagram: the fast path (compiled templates), else the full path; counted."""
        fast = self._fast_respond
        if fast is not None and not boot_server:
            try:
                out = fast(data)
            except Exception:  # e.g. a broken cache entry: the full path counts it
                out = None
            if out is not None:
                stats = self.stats
                stats.received += 1
                stats.replied[_TYPE_NAMES[out[0][_REPLY_TYPE]]] += 1
                stats.fast += 1
                return out
        return self.respond_full(data, source, boot_server)

    def respond_full(
        self, data: bytes, source: tuple[str, int], boot_server: bool
    ) -> tuple[bytes, tuple[str, int]] | None:
        """parse -> decide -> build -> send_decision; every datagram counted."""
        stats = self.stats
        stats.received += 1
        try:
            request = parse_untrusted(data)
        except BadPacket as exc:
            stats.dropped[f"bad packet: {exc}"] += 1
            return None
        try:
            return self._answer(request, source, boot_server)
        except Exception:  # a bug or a broken cache entry must not stop the service
            log.exception("dhcp: answering %s failed", request.mac)
            stats.dropped["internal error"] += 1
            return None

    def _answer(
        self, request: DhcpPacket, source: tuple[str, int], boot_server: bool
    ) -> tuple[bytes, tuple[str, int]] | None:
        stats = self.stats
        decision = self.policy.decide(request, self.lookup, boot_server=boot_server)
        if type(decision) is not Reply:
            if type(decision) is Enrol:
                if self.to_enrol is None:
                    stats.dropped["unknown MAC (no enrol callback)"] += 1
                elif self.enrol_limit is not None and not self.enrol_limit.take(self.now()):
                    stats.dropped["enrol rate limited"] += 1
                else:
                    stats.dropped["enrolling"] += 1
                    self.to_enrol.append(decision.mac)
            else:
                stats.dropped[decision.reason] += 1  # type: ignore[union-attr]
            return None
        if decision.warnings:
            for warning in decision.warnings:
                stats.warnings[warning] += 1
                log.info("dhcp: %s from %s (fell back)", warning, request.mac)
        mtype = decision.message_type
        reply = build_reply(
            request, mtype, decision.ciaddr, decision.yiaddr, decision.siaddr, decision.sname, decision.file,
            decision.options,
        )  # fmt: skip
        dest = send_decision(request, mtype, source, boot_server=boot_server)
        stats.replied[_TYPE_NAMES.get(mtype, str(mtype))] += 1
        if self.fast is not None and not boot_server:
            try:
                self.fast.learn(request)  # the next such request takes the fast path
            except Exception:  # the reply above stands; the fast path just stays cold
                log.exception("dhcp: compiling a fast-path template for %s failed", request.mac)
        return reply, (dest.address, dest.port)


class _Warmer:
    """Compiles fast-path templates in the receive thread while its socket is idle.

    Called by the receive loop when its receive timeout (``POLL_INTERVAL``) expired
    with nothing received. A sweep covers every node MAC the lookup lists
    (``lookup.macs()``; a lookup without it is not warmed) for every client class
    of ``FastPath.classes``; a new sweep starts when the lookup's revision or the
    classes changed (already compiled pairs are skipped at the cost of a dict
    lookup). Between chunks of ``WARM_CHUNK`` pairs it polls the socket and returns
    as soon as a datagram waits, so a request is delayed by one chunk at most
    (~0.3 ms); a sweep that was cut short goes on at the next idle moment.
    """

    def __init__(self, fast: FastPath, lookup: Any, stats: DhcpStats, fd: int) -> None:
        self.fast = fast
        self.lookup = lookup
        self.stats = stats
        self.macs: Callable[[], list[str]] | None = getattr(lookup, "macs", None)
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)
        self.state: object = None
        self.pending: Iterator[tuple[str, ClientClass]] | None = None

    def idle(self) -> None:
        if self.macs is None:
            return
        try:
            state = (getattr(self.lookup, "revision", None), self.fast.classes_version)
            if state != self.state:
                self.state = state
                macs = self.macs()
                classes = list(self.fast.classes)
                self.pending = ((mac, cls) for cls in classes for mac in macs)
            pending = self.pending
            while pending is not None:
                chunk = list(islice(pending, WARM_CHUNK))
                if not chunk:
                    self.pending = None
                    self.stats.warm_sweeps += 1
                    return
                self.stats.warmed += self.fast.warm(chunk)
                if self.poll.poll(0):  # a datagram waits: answer it first
                    return
        except Exception:  # warming is an optimisation: never stop the receive loop for it
            log.exception("dhcp: warming fast-path templates failed")
            self.pending = None


def _open_socket(address: str, port: int, interface: str, rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _serve_socket_native(
    sock: socket.socket,
    responder: DhcpResponder,
    boot_server: bool,
    notify_enrol: Callable[[], None] | None,
    stop: threading.Event,
    hold: float = HOLD,
    pace: float = PACE,
) -> None:
    """The receive loop in C (ext/dhcp_loop.pyx): recvmmsg/sendmmsg batches, GIL released while blocked."""
    assert _loop_c is not None
    full = responder.respond_full

    def respond_full(data: bytes, source: tuple[str, int]) -> tuple[bytes, tuple[str, int]] | None:
        return full(data, source, boot_server)

    def after_full() -> None:
        if responder.to_enrol and notify_enrol is not None:
            notify_enrol()

    fast = None if boot_server else responder._fast_respond
    warmer = None
    if fast is not None and responder.fast is not None:
        warmer = _Warmer(responder.fast, responder.lookup, responder.stats, sock.fileno())
    _loop_c.serve(
        sock.fileno(), fast, respond_full, responder.stats, stop, after_full, BATCH, MAX_DATAGRAM,
        hold, 0, pace, PACE_FLOOR, warmer.idle if warmer is not None else None,
    )


def _serve_socket_blocking(
    sock: socket.socket,
    responder: DhcpResponder,
    boot_server: bool,
    notify_enrol: Callable[[], None] | None,
    stop: threading.Event,
) -> None:
    """The receive loop, run in a worker thread: blocking recvfrom, no scheduler round trip per packet.

    The socket has a kernel receive timeout so ``stop`` is seen within ``POLL_INTERVAL``.
    """
    stats = responder.stats
    respond = responder.respond
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    warmer = None
    if not boot_server and responder.fast is not None:
        warmer = _Warmer(responder.fast, responder.lookup, stats, sock.fileno())
    while not stop.is_set():
        try:
            data, source = recvfrom(MAX_DATAGRAM)
        except BlockingIOError:  # SO_RCVTIMEO expired: idle; look at ``stop`` again
            if warmer is not None:
                warmer.idle()
            continue
        except OSError as exc:  # e.g. ICMP errors surfaced on the socket
            stats.dropped[f"receive failed: {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            continue
        out = respond(data, source, boot_server)
        if out is not None:
            try:
                sendto(out[0], out[1])
            except OSError as exc:
                stats.dropped[f"send failed: {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
        elif responder.to_enrol and notify_enrol is not None:
            notify_enrol()


async def _serve_socket(
    sock: socket.socket,
    responder: DhcpResponder,
    boot_server: bool,
    notify_enrol: Callable[[], None] | None,
    hold: float = HOLD,
    pace: float = PACE,
) -> None:
    """Run the receive loop in a worker thread until cancelled (then it stops within POLL_INTERVAL)."""
    stop = threading.Event()
    token = trio.lowlevel.current_trio_token()

    def notify() -> None:
        if notify_enrol is not None:
            token.run_sync_soon(notify_enrol)

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    # A blocking socket with a kernel receive timeout: one syscall per recvfrom/sendto
    # (Python's own socket timeout would poll() before each of them).
    sock.setblocking(True)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVTIMEO,
        struct.pack("ll", int(POLL_INTERVAL), int(POLL_INTERVAL % 1 * 1e6)),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_when_cancelled)
        # Its own limiter: this thread lives as long as the service and must not hold one of
        # the default limiter's tokens that other to_thread users (the etcd client) share.
        loop = partial(_serve_socket_native, hold=hold, pace=pace) if LOOP == "native" else _serve_socket_blocking
        await trio.to_thread.run_sync(
            loop, sock, responder, boot_server, notify, stop, limiter=trio.CapacityLimiter(1)
        )


class _Enroller:
    """Runs ``enrol(mac)`` for unknown MACs off the hot path, one MAC at a time at most once."""

    def __init__(self, enrol: Callable[[str], Awaitable[Any]], responder: DhcpResponder) -> None:
        self.enrol = enrol
        self.responder = responder
        self.pending: set[str] = set()
        self.wake = trio.Event()
        responder.to_enrol = deque()

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        send, receive = trio.open_memory_channel[str](ENROL_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._work, receive)
            while True:
                await self.wake.wait()
                self.wake = trio.Event()
                queue = self.responder.to_enrol or deque()
                while queue:
                    mac = queue.popleft()
                    if mac in self.pending:
                        continue
                    try:
                        send.send_nowait(mac)
                    except trio.WouldBlock:
                        self.responder.stats.dropped["enrol queue full"] += 1
                        continue
                    self.pending.add(mac)

    async def _work(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        stats = self.responder.stats
        async for mac in receive:
            try:
                await self.enrol(mac)
            except Exception:
                log.exception("dhcp: enrolling %s failed", mac)
                stats.enrol_failed += 1
            else:
                stats.enrolled += 1
            finally:
                self.pending.discard(mac)


async def serve_dhcp(
    config: Any,
    lookup: NodeLookup,
    *,
    head_address: str,
    http_port: int,
    enrol: Callable[[str], Awaitable[Any]] | None = None,
    fast: bool = True,
    hold: float = HOLD,
    pace: float = PACE,
    task_status: trio.TaskStatus[DhcpBound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve DHCP (``config`` is a cwboot.config.DhcpConfig) until cancelled.

    ``fast=False`` turns the compiled-template fast path off (every datagram takes
    the full path; for comparisons); ``hold`` is the native loop's batching wait
    (``HOLD``; 0: answer every datagram as soon as it is read); ``pace`` its reply
    pacing (``PACE`` x the request arrival rate; 0: off).
    """
    policy = BootPolicy.from_config(config, head_address=head_address, http_port=http_port)
    stats = DhcpStats()
    clock = trio.lowlevel.current_clock()
    limit = TokenBucket(config.enrol_rate, config.enrol_burst, clock.current_time())
    responder = DhcpResponder(
        policy, lookup, stats, enrol_limit=limit, now=clock.current_time, fast=fast
    )
    sockets = [_open_socket(config.listen, config.port, config.interface, config.rcvbuf_bytes)]
    try:
        if policy.proxy:
            sockets.append(
                _open_socket(
                    config.listen, config.proxy_port, config.interface, config.rcvbuf_bytes
                )
            )
        async with trio.open_nursery() as nursery:
            notify = None
            if enrol is not None and policy.enrol:
                enroller = _Enroller(enrol, responder)
                nursery.start_soon(enroller.run)
                notify = enroller.notify
            main = sockets[0]
            nursery.start_soon(_serve_socket, main, responder, False, notify, hold, pace)
            if len(sockets) > 1:
                nursery.start_soon(_serve_socket, sockets[1], responder, True, notify, hold, pace)
            address, port = main.getsockname()
            task_status.started(
                DhcpBound(
                    address, port, sockets[1].getsockname()[1] if len(sockets) > 1 else 0, stats
                )
            )
    finally:
        for sock in sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()
