"""An IPMI worker with probes in pyghmi's I/O that count the two stalls pyghmi_fixes removes.

    python tests/control/pyghmi_probe_worker.py REPORT.json [ipmi_worker options]

runs cwboot.control.power.ipmi_worker (with or without the fixes, as its
options say) and at exit writes ``{"missed_wakeups": n, "blocking_receives":
n}`` to REPORT.json. Both are events, not durations, so the counts do not
depend on how loaded the machine is:

- missed wake-up (flaw 2): a caller goes to sleep with the answer it waits
  for already in its session's queue, for longer than ``BOUNDED`` (pyghmi:
  with no bound but its retry timer, 0.5-1.5 s; the fix returns at once and
  never sleeps more than 20 ms);
- blocking receive (flaw 1): the I/O thread calls ``recvfrom`` on a shared
  socket that is in blocking mode with no datagram waiting, so it sits there
  until some datagram comes and every session of the process stalls.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import types
from typing import Any

from pyghmi.ipmi.private import session

from cwboot.control.power import ipmi_worker, pyghmi_fixes

# A sleep bounded by this is a re-check, not a stall.
BOUNDED = 0.1

counts = {"missed_wakeups": 0, "blocking_receives": 0}
_lock = threading.Lock()
_waiting = threading.local()


def _count(kind: str) -> None:
    with _lock:
        counts[kind] += 1


def _answer_queued(addr: Any) -> bool:
    try:
        handlers = list(session.Session.bmc_handlers.get(addr, {}).values())
    except RuntimeError:  # resized by the I/O thread meanwhile
        return False
    return any(h.pktqueue for h in handlers)


class ProbeEvent(threading.Event):
    def wait(self, timeout: float | None = None) -> bool:
        addr = getattr(_waiting, "addr", None)
        long_sleep = timeout is None or timeout > BOUNDED
        if addr is not None and long_sleep and not self.is_set() and _answer_queued(addr):
            _count("missed_wakeups")
        return super().wait(timeout)


class ProbeSocket(socket.socket):
    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        if (
            self.getblocking()
            and not flags & socket.MSG_DONTWAIT
            and not select.select([self], [], [], 0)[0]
        ):
            _count("blocking_receives")
        return super().recvfrom(bufsize, flags)


def install_probes() -> None:
    """Wrap whichever ``_io_wait`` is installed; give pyghmi (and the fixes) probing types."""
    real_wait = session._io_wait

    def probed_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        _waiting.addr = myaddr
        try:
            real_wait(timeout, myaddr, evq)
        finally:
            _waiting.addr = None

    session._io_wait = probed_wait
    probing_threading = types.SimpleNamespace(**{**vars(threading), "Event": ProbeEvent})
    session.threading = probing_threading
    pyghmi_fixes.threading = probing_threading  # type: ignore[attr-defined,assignment]
    session.socket = types.SimpleNamespace(**{**vars(socket), "socket": ProbeSocket})


def main() -> int:
    report, options = sys.argv[1], sys.argv[2:]
    if "--without-pyghmi-fixes" not in options:
        pyghmi_fixes.apply()  # before the probes wrap it (main's own apply() is then a no-op)
    install_probes()
    status = ipmi_worker.main(options)
    with open(report, "w") as out:
        json.dump(counts, out)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
