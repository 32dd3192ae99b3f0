"""Work-arounds for pyghmi's shared I/O thread (pyghmi 1.6), applied once per worker process.

pyghmi multiplexes every session of a process over a few shared UDP sockets
and one I/O thread. Three flaws show up as soon as several threads use it:

1. ``_io_sendto`` switches the shared socket to *blocking* before each send,
   while the I/O thread switches it back to non-blocking before each
   receive. When a send lands between the I/O thread's ``setblocking(0)`` and
   its ``recvfrom``, the I/O thread blocks in ``recvfrom`` until some datagram
   arrives: every session of the process stalls (or hangs for good when no
   more datagrams come). Fix: never touch the blocking mode; receive with
   ``MSG_DONTWAIT``.
2. ``_io_wait`` registers the caller's wake-up event only *after* it sent its
   request. When the answer is grabbed by the I/O thread before the event is
   registered, nobody sets the event and the caller sleeps until its retry
   timer (0.5-1.5 s), then resends. Fix: after registering, look for
   datagrams already queued for that BMC and return at once; and never sleep
   longer than ``MAX_WAIT`` (callers loop and re-check).
3. The packet queues are drained with ``while queue: queue.popleft()`` from
   every thread: the process-wide ``sessionqueue`` (sessions with datagrams
   waiting) in ``Session.wait_for_rsp``, which any thread waiting for its
   login runs, and each session's ``pktqueue`` in ``process_pktqueue``, run
   both by the session's own thread and by any thread draining
   ``sessionqueue``. When another thread takes the last entry between the
   check and the pop, ``popleft`` raises IndexError out of ``Session(...)``
   or ``raw_command``: the operation fails and a login the BMC completed is
   never closed. (CPython re-tests a ``while`` condition at the loop's
   backward jump, where it may switch threads: the window is real, about
   once in 7,000 operations with 256 at once.) Fix: ``sessionqueue`` becomes
   a queue whose ``popleft`` on empty hands back a session with nothing to
   process, and a session's packets are processed by one thread at a time
   (the others wait, then find the queue empty), each pop guarded.

tests/control/test_power_pyghmi_fixes.py counts both kinds of stall (as
events, with probes in pyghmi's I/O) without these patches and finds none
with them; it stages the drain race of (3) with and without them.
"""

from __future__ import annotations

import collections
import socket
import threading
from typing import Any

from pyghmi.ipmi.private import session as _session

# Longest a thread sleeps before re-checking its session's queue.
MAX_WAIT = 0.02

_applied = False


def _io_sendto(mysocket: socket.socket, packet: bytes, sockaddr: Any) -> None:
    try:
        mysocket.sendto(packet, sockaddr)
    except OSError:
        pass  # as pyghmi: a lost datagram is retried by the session's timer


def _io_recvfrom(mysocket: socket.socket, size: int) -> tuple[bytes, Any] | None:
    try:
        return mysocket.recvfrom(size, socket.MSG_DONTWAIT)
    except OSError:
        return None


def _packets_waiting(myaddr: Any) -> bool:
    try:
        handlers = list(_session.Session.bmc_handlers.get(myaddr, {}).values())
    except RuntimeError:  # resized by the I/O thread meanwhile: look again next time
        return False
    return any(h.pktqueue for h in handlers)


def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    # pyghmi's own clock (os.times()), the one selectdeadline is on.
    deadline = timeout + _session._monotonic_time()
    _session.ioqueue.append((deadline, evt, myaddr))
    if deadline < _session.selectdeadline:
        intsock = _session.iosockets[0]
        intsock.sendto(b"\x01", (_session.myself, intsock.getsockname()[1]))
    if myaddr is not None and _packets_waiting(myaddr):
        return
    evt.wait(min(max(timeout, 0.0), MAX_WAIT))


class _NothingToProcess:
    """What ``_SessionQueue.popleft`` hands back when another thread took the last entry."""

    def process_pktqueue(self) -> None:
        pass


_NOTHING = _NothingToProcess()


class _SessionQueue(collections.deque):  # type: ignore[type-arg]
    """pyghmi's ``sessionqueue``; popping it when empty is not an error (the drain race)."""

    def popleft(self) -> Any:
        try:
            return super().popleft()
        except IndexError:
            return _NOTHING


def _process_pktqueue(self: Any) -> None:
    """``Session.process_pktqueue``, one thread at a time per session, each pop guarded (the drain race)."""
    lock = self.__dict__.setdefault("_cwboot_pktqueue_lock", threading.RLock())
    with lock:
        while True:
            try:
                pkt = list(self.pktqueue.popleft())
            except IndexError:
                return
            pkt[0] = bytearray(pkt[0])
            if not (pkt[0][0] == 6 and pkt[0][2:4] == b"\xff\x07"):
                continue  # not RMCP/IPMI: dropped, as pyghmi does
            if pkt[1] in self.bmc_handlers:
                self._handle_ipmi_packet(pkt[0], sockaddr=pkt[1], qent=pkt)
            elif pkt[2] in self.bmc_handlers:
                self.sessionless_data(pkt[0], pkt[1])


def apply() -> None:
    """Patch pyghmi's module-level I/O functions (idempotent). Call before the first session."""
    global _applied
    if _applied:
        return
    _session._io_sendto = _io_sendto
    _session._io_recvfrom = _io_recvfrom
    _session._io_wait = _io_wait
    _session.sessionqueue = _SessionQueue(_session.sessionqueue)
    _session.Session.process_pktqueue = _process_pktqueue
    _applied = True


def forget_session(host: str, user: str, password: str, port: int) -> None:
    """Drop the session for these credentials from pyghmi's registry of sessions being set up.

    pyghmi adds it under ``(host, user, password, port, kg)`` with str values
    but removes it with the bytes it encoded them to, so it is never removed:
    the next ``Session(...)`` for the same BMC gets that dead object back (a
    TypeError after a logout, a silent failure after a refused login). Call
    after every operation, whatever its outcome.
    """
    _session.Session.initting_sessions.pop((host, user, password, port, None), None)
