"""Stage pyghmi's queue-drain race: another thread takes the last entry between check and pop.

    python tests/control/pyghmi_drain_race.py [--with-fixes]

prints ``{"sessionqueue": "IndexError(...)" or null, "pktqueue": ...}``: what
the thread that lost the race raised, for each of the two queues.

pyghmi drains the process-wide ``sessionqueue`` (in ``Session.wait_for_rsp``)
and each session's ``pktqueue`` (in ``Session.process_pktqueue``) with
``while queue: queue.popleft()``, from every thread of an IPMI worker. In a
1,000-node power-on, 256 at once, a thread lost that race about once in
7,000 operations (CPython may switch threads between the two, at the
loop's backward jump). Waiting for that here would be slow and would prove
nothing when it did not happen, so the interleaving is staged instead: a
line tracer stops thread A on the line that pops (its check has passed, the
queue is not empty), thread B runs the same pyghmi call and drains the queue,
then A goes on. The code run is pyghmi's own (with the fixes, as patched);
the sessions are real ``Session`` objects; the datagrams are not IPMI (pyghmi
drops them after the pop), so no network is needed.
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pyghmi.ipmi.private import session as pyghmi_session

from cwboot.control.power import pyghmi_fixes

JUNK = (b"\x00\x00\x00\x00", ("127.0.0.1", 9), None)
# How long A waits for B to drain: B may be held by a lock of the fixed code, then A goes on.
B_GRACE = 0.5


def stage(call: Callable[[], Any], queue: collections.deque[Any]) -> str | None:
    """Run ``call`` in A and in B, B's run wedged between A's check and A's pop."""
    b_go, b_done = threading.Event(), threading.Event()
    outcome: list[str | None] = [None]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            return tracer if "pktqueue" in frame.f_code.co_name or frame.f_code.co_name == "wait_for_rsp" else None
        if event == "line" and not b_go.is_set() and queue:
            if "popleft()" in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
                b_go.set()
                b_done.wait(B_GRACE)
        return tracer

    def thread_a() -> None:
        sys.settrace(tracer)
        try:
            call()
        except Exception as exc:
            outcome[0] = repr(exc)
        finally:
            sys.settrace(None)

    def thread_b() -> None:
        b_go.wait(5)
        call()
        b_done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b_go.is_set(), "thread A never reached the pop"
    return outcome[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--with-fixes", action="store_true")
    args = ap.parse_args()
    if args.with_fixes:
        pyghmi_fixes.apply()
    # No I/O thread here: waiting for datagrams returns at once (pyghmi's would wait forever).
    pyghmi_session._io_wait = lambda timeout, myaddr=None, evq=None: None
    Session = pyghmi_session.Session

    def session_with_a_datagram() -> Any:
        sess = object.__new__(Session)
        sess.pktqueue = collections.deque([JUNK])
        return sess

    # wait_for_rsp, as a thread waiting for its login runs it: one session has a datagram.
    sess = session_with_a_datagram()
    pyghmi_session.sessionqueue.append(sess)
    result = {"sessionqueue": stage(lambda: Session.wait_for_rsp(timeout=0.001), pyghmi_session.sessionqueue)}
    # process_pktqueue, as the session's own thread (awaitresponse) and another thread run it.
    sess = session_with_a_datagram()
    result["pktqueue"] = stage(sess.process_pktqueue, sess.pktqueue)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
