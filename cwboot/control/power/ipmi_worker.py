"""The IPMI worker process: pyghmi in threads, far from the head's thousands of sockets.

pyghmi is blocking and its I/O loop uses ``select()``, which breaks on any file
descriptor >= 1024; a head serving a boot storm holds thousands. So the head
starts this as a separate process (few descriptors: three pipes and pyghmi's
shared UDP sockets) and talks to it over stdin/stdout, one JSON object a line:

    request  {"id": 7, "host": "10.1.0.7", "port": 623, "user": "admin",
              "password": "...", "op": "on", "bootdev": "pxe", "persistent": false}
    reply    {"id": 7, "ok": true, "state": "on", "bootdev": "pxe"}
             {"id": 8, "ok": false, "error": "wrong user name or password", "retryable": false}

Each request runs in a thread of a pool of ``--threads``: login (RMCP+),
the commands of the operation as raw IPMI requests (no per-call Get Device ID,
which pyghmi's ``Command`` helpers add), then logout - always, even on error.
Replies come back as they complete, in any order. EOF on stdin: finish what
is running, then exit. Passwords are never written anywhere.

The reply channel is private: ``main`` first duplicates fd 1 for the replies,
then points fd 1 and ``sys.stdout`` at stderr, so a ``print()`` in pyghmi
(session.py has several) or any write to fd 1 lands in the head's log instead
of corrupting the replies. (The head skips and counts a line that is not a
reply anyway: cwboot.control.power.ipmi.parse_reply_untrusted.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi.private import session as pyghmi_session

from cwboot.control.power import pyghmi_fixes

# Chassis Control (IPMI 28.3) by operation.
CHASSIS_CONTROL = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "soft": 5}
# Boot flags parameter (28.13, param 5): data 2 = device selector.
BOOT_DEVICE_SELECTOR = {"pxe": 0x04, "disk": 0x08}
# Completion codes worth another attempt: node busy, timeout, out of space, unspecified.
RETRYABLE_CODES = {0xC0, 0xC3, 0xC4, 0xFF}
CC_NOT_IN_PRESENT_STATE = 0xD5
# Longest _close waits for a login still under way before logging out anyway (pyghmi's own
# login gives up after ~4.6 s).
LOGIN_GIVE_UP = 10.0
# Power commands that can safely be sent again after an answer was lost: on twice is on.
IDEMPOTENT = {"on", "off"}


class OpFailed(Exception):
    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def _login_error(exc: Exception) -> OpFailed:
    text = str(exc.args[0]) if exc.args and exc.args[0] else ""
    low = text.lower()
    if "insufficient resources" in low:  # its message also says "wait for ... timeout"
        return OpFailed("login refused: the BMC has no free session", retryable=True)
    if not text or text == "None" or "timeout" in low:
        return OpFailed("no answer from the BMC (login timed out)")
    if "password" in low or "unauthorized name" in low or "rakp" in low:
        return OpFailed("login refused: wrong user name or password")
    return OpFailed(f"login failed: {text}")


def _command(sess: Any, netfn: int, cmd: int, data: Sequence[int] = ()) -> tuple[int, bytes]:
    """-> (completion code, data). Raises OpFailed when the BMC does not answer."""
    try:
        rsp = sess.raw_command(netfn=netfn, command=cmd, data=list(data))
    except pyghmi_exc.IpmiException as exc:
        raise OpFailed(f"session lost: {exc}", retryable=True) from None
    if rsp is None or ("error" in rsp and "code" not in rsp):
        raise OpFailed(f"no answer to command {netfn:#04x}/{cmd:#04x}", retryable=True)
    if rsp.get("code") == 0xFFFF:
        raise OpFailed(f"no answer to command {netfn:#04x}/{cmd:#04x}", retryable=True)
    return rsp["code"], bytes(rsp.get("data", b""))


def _check(code: int, what: str) -> None:
    if code:
        raise OpFailed(
            f"{what} refused by the BMC (completion code {code:#04x})", code in RETRYABLE_CODES
        )


def _power_state(sess: Any) -> str:
    code, data = _command(sess, 0x00, 0x01)  # Get Chassis Status
    _check(code, "get chassis status")
    if not data:
        raise OpFailed("get chassis status: empty answer")
    return "on" if data[0] & 1 else "off"


def _set_bootdev(sess: Any, device: str, persistent: bool) -> None:
    # Clear the boot-info acknowledge bits first (param 3), as ipmitool and pyghmi do.
    _check(_command(sess, 0x00, 0x08, (3, 8))[0], "set boot info acknowledge")
    flags = 0x80 | (0x40 if persistent else 0)
    code, _ = _command(sess, 0x00, 0x08, (5, flags, BOOT_DEVICE_SELECTOR[device], 0, 0, 0))
    _check(code, "set boot device")


def _chassis_control(sess: Any, op: str) -> str:
    try:
        code, _ = _command(sess, 0x00, 0x02, (CHASSIS_CONTROL[op],))
        if code == CC_NOT_IN_PRESENT_STATE and op in ("cycle", "reset"):
            # The node is off: a cycle or reset of it means "boot it" (pyghmi's 'boot').
            code, _ = _command(sess, 0x00, 0x02, (CHASSIS_CONTROL["on"],))
    except OpFailed as exc:
        # The command went out: the BMC may have acted. Again only if doing it twice is harmless.
        raise OpFailed(
            f"no answer to power {op} after it was sent (the BMC may have acted): {exc}",
            retryable=op in IDEMPOTENT,
        ) from None
    _check(code, f"power {op}")
    return "off" if op in ("off", "soft") else "on"


def _open_session(req: dict[str, Any]) -> Any:
    """pyghmi's ``Session(...)`` (login), in its two steps, so the session is in hand even
    when its constructor fails with something other than a refused or silent login: then
    it is logged out (once pyghmi is done logging in) before the error goes on."""
    cls = pyghmi_session.Session
    kwargs = dict(
        bmc=req["host"], userid=req["user"], password=req["password"], port=req["port"],
        keepalive=False,
    )  # fmt: skip
    sess = cls.__new__(cls, **kwargs)
    try:
        sess.__init__(**kwargs)
    except pyghmi_exc.IpmiException:
        raise  # a failed login: pyghmi has already given the session up
    except BaseException:
        _close(sess)
        raise
    return sess


def _close(sess: Any) -> None:
    """Log out, whatever happened: after a login still under way finishes (pyghmi gives up
    on its own), so that a session the BMC opened is always closed. Never raises."""
    try:
        deadline = time.monotonic() + LOGIN_GIVE_UP
        while sess.logging and not sess.logged and not sess.broken and time.monotonic() < deadline:
            pyghmi_session.Session.wait_for_rsp(timeout=pyghmi_fixes.MAX_WAIT)
        sess.logout()
    except Exception:  # a failed logout must not hide the result; the log shows it
        log_internal_error("logging out")


def run_operation(
    req: dict[str, Any], report_stage: Callable[[str], None] = lambda stage: None
) -> dict[str, Any]:
    """Log in, do ``req["op"]``, log out (always). Returns the reply (without its id).

    ``report_stage(stage)`` is called as the operation moves past login: "bootdev"
    before the boot device is set, "command" before the operation's own command
    goes out (from then on, the BMC may act even if no answer comes back).
    Past ``req["commands_until"]`` (time.monotonic(), set by the head to a little
    before the node's deadline) nothing more is sent: the operation fails and
    logs out.
    """
    try:
        sess = _open_session(req)
    except pyghmi_exc.IpmiException as exc:
        fail = _login_error(exc)
        return {"ok": False, "error": str(fail), "retryable": fail.retryable}
    finally:
        pyghmi_fixes.forget_session(req["host"], req["user"], req["password"], req["port"])
    until = req.get("commands_until")

    def next_stage(stage: str) -> None:
        # Said before the check: a stage the head never heard of was never acted on.
        report_stage(stage)
        if isinstance(until, (int, float)) and time.monotonic() > until:
            raise OpFailed(f"timed out before the {stage} stage (nothing sent to the BMC)")

    try:
        op, device = req["op"], req.get("bootdev", "")
        reply: dict[str, Any] = {"ok": True}
        if device:
            next_stage("command" if op == "bootdev" else "bootdev")
            _set_bootdev(sess, device, bool(req.get("persistent")))
            reply["bootdev"] = device
        if op in CHASSIS_CONTROL or op == "status":
            next_stage("command")
            reply["state"] = _power_state(sess) if op == "status" else _chassis_control(sess, op)
        return reply
    except OpFailed as exc:
        return {"ok": False, "error": str(exc), "retryable": exc.retryable}
    finally:
        _close(sess)
        pyghmi_fixes.forget_session(req["host"], req["user"], req["password"], req["port"])


class _Replies:
    """Writes reply lines to stdout from many threads."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, reply: dict[str, Any]) -> None:
        line = json.dumps(reply, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            self.out.write(line)
            self.out.flush()


def log_internal_error(doing: str) -> None:
    """The traceback of the exception being handled, to stderr (the head's log), in one write."""
    text = traceback.format_exc()
    sys.stderr.write(f"IPMI worker: internal error while {doing}:\n{text}")
    sys.stderr.flush()


def _handle(replies: _Replies, req: dict[str, Any]) -> None:
    def report_stage(stage: str) -> None:
        replies.send({"id": req["id"], "stage": stage})

    try:
        reply = run_operation(req, report_stage)
    except Exception as exc:  # report, never lose a request; the traceback goes to the log
        log_internal_error(f"running {req.get('op')!r} on {req.get('host')}:{req.get('port')}")
        reply = {
            "ok": False,
            "error": f"internal error in the IPMI worker: {type(exc).__name__}",
            "retryable": False,
        }
    reply["id"] = req["id"]
    replies.send(reply)


def private_reply_channel() -> BinaryIO:
    """A private duplicate of fd 1 for the replies; fd 1 and sys.stdout then go to stderr."""
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cwboot.control.power.ipmi_worker")
    ap.add_argument("--threads", type=int, default=32)
    # Only for the test that shows pyghmi's flaws: run without the work-arounds.
    ap.add_argument("--without-pyghmi-fixes", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    replies = _Replies(private_reply_channel())
    if not args.without_pyghmi_fixes:
        pyghmi_fixes.apply()
    with ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="ipmi") as pool:
        for line in sys.stdin.buffer:
            try:
                req = json.loads(line)
            except ValueError:
                continue
            pool.submit(_handle, replies, req)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
