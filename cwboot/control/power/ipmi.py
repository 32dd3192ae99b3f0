"""The IPMI driver, head side: worker processes running pyghmi, spoken to over pipes.

``await nursery.start(IpmiDriver(...).serve)`` starts ``processes`` copies of
cwboot.control.power.ipmi_worker, each with ``threads`` threads, and hands
requests to the least busy. Replies are matched to requests by id. A worker
that dies is replaced and its in-flight operations fail with "IPMI worker
died during the operation (...)"; one that stops answering (no reply within
``hung_after`` seconds) is killed and replaced the same way.

A worker's stdout is read as untrusted input: ``parse_reply_untrusted`` turns
a line into (id, Attempt) or raises ``BadReply``; a line that is not a reply
(stray output of a library, a truncated line) is skipped and counted in
``IpmiDriver.drops`` by reason, never raised into the power nursery. (The
worker itself keeps library prints off the channel: see ipmi_worker.py.)
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from cwboot.control.power.driver import STAGES, Attempt, Progress
from cwboot.control.power.request import PowerRequest, PowerTarget

log = logging.getLogger(__name__)

# Longest pyghmi can take for one operation before it gives up on its own is
# well under this (login ~4.6 s, a few commands); past it the worker is hung.
HUNG_AFTER = 60.0
# On shutdown, seconds the workers get to finish (and log out) running operations.
SHUTDOWN_GRACE = 10.0
# A reply line is a few hundred bytes; a longer "line" is not a reply and is dropped.
MAX_REPLY_BYTES = 65536
# Pause before trying again to start a worker process that could not be started.
RESTART_PAUSE = 1.0
# A worker sends an operation's command (or boot device) only up to this long before the
# operation's deadline, and says "command" on the reply channel first: so a node reported
# at its deadline as "before the command was sent" had nothing sent afterwards, and the
# stage line had this long to reach the head.
COMMAND_GUARD = 0.2


class BadReply(ValueError):
    """A line on a worker's stdout that is not a reply; the message is the drop reason."""


def parse_reply_untrusted(line: bytes) -> tuple[int, Attempt | str]:
    """One line of a worker's stdout -> (request id, Attempt), or (request id, stage) for a
    progress line (``{"id": 7, "stage": "command"}``); BadReply for anything else."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadReply("not JSON") from None
    if not isinstance(doc, dict):
        raise BadReply("not a JSON object")
    ident, ok = doc.get("id"), doc.get("ok")
    if "stage" in doc and "ok" not in doc:
        if type(ident) is not int or doc["stage"] not in STAGES:
            raise BadReply("a stage line without integer id or known stage")
        return ident, str(doc["stage"])
    if type(ident) is not int or type(ok) is not bool:
        raise BadReply("no integer id or boolean ok")
    texts = {key: doc.get(key, "") for key in ("state", "bootdev", "error")}
    retryable = doc.get("retryable", False)
    if not all(isinstance(v, str) for v in texts.values()) or type(retryable) is not bool:
        raise BadReply("a field of the wrong type")
    return ident, Attempt(ok, retryable=retryable, **texts)


@dataclass
class _Worker:
    number: int
    process: trio.Process
    pending: dict[int, tuple[trio.Event, list[Attempt], Progress]] = field(default_factory=dict)
    send_lock: trio.Lock = field(default_factory=trio.Lock)


class IpmiDriver:
    scheme = "ipmi"

    def __init__(
        self,
        processes: int = 1,
        threads: int = 32,
        *,
        pyghmi_fixes: bool = True,
        hung_after: float = HUNG_AFTER,
        command: Sequence[str] = (sys.executable, "-m", "cwboot.control.power.ipmi_worker"),
    ) -> None:
        """``command`` starts a worker (the options are appended); tests run instrumented ones."""
        self.processes = max(1, processes)
        self.threads = max(1, threads)
        self.pyghmi_fixes = pyghmi_fixes
        self.hung_after = hung_after
        self.command = list(command)
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.restarts = 0
        # Lines read from workers that were not replies, by reason (see parse_reply_untrusted).
        self.drops: dict[str, int] = {}

    def _argv(self) -> list[str]:
        argv = [*self.command, "--threads", str(self.threads)]
        if not self.pyghmi_fixes:
            argv.append("--without-pyghmi-fixes")
        return argv

    async def serve(
        self, *, task_status: trio.TaskStatus[IpmiDriver] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the worker processes until cancelled; reports itself when they are started."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for number in range(self.processes):
                    await self._start_worker(number)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._stop_workers()

    async def _stop_workers(self) -> None:
        """Close each worker's stdin so it finishes (and logs out) what it runs; kill stragglers."""
        for worker in self._workers:
            if worker.process.stdin is not None:
                await worker.process.stdin.aclose()
        with trio.move_on_after(SHUTDOWN_GRACE):
            for worker in self._workers:
                await worker.process.wait()
        for worker in self._workers:
            self._kill(worker, "IPMI worker stopped with the power service")
            await worker.process.wait()

    async def _start_worker(self, number: int) -> _Worker:
        assert self._nursery is not None
        process = await trio.lowlevel.open_process(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        worker = _Worker(number, process)
        if number < len(self._workers):
            self._workers[number] = worker
        else:
            self._workers.append(worker)
        self._nursery.start_soon(self._read_replies, worker)
        return worker

    def _kill(self, worker: _Worker, error: str) -> None:
        """Kill the worker (if alive) and fail each of its pending operations with ``error``.

        Not retryable: the BMC may already have acted (a cycle must not run twice).
        """
        if worker.process.returncode is None:
            worker.process.kill()
        for event, box, _ in worker.pending.values():
            box.append(Attempt(False, error=error))
            event.set()
        worker.pending.clear()

    def _drop(self, worker: _Worker, reason: str, line: bytes) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        if self.drops[reason] == 1:  # once per reason: a chatty library must not flood the log
            log.warning(
                "IPMI worker %d wrote a line that is not a reply (%s), skipped: %r",
                worker.number,
                reason,
                line[:120],
            )

    def _take_line(self, worker: _Worker, line: bytes) -> None:
        try:
            ident, attempt = parse_reply_untrusted(line)
        except BadReply as exc:
            self._drop(worker, str(exc), line)
            return
        if isinstance(attempt, str):  # progress of an operation still running
            waiter = worker.pending.get(ident)
            if waiter is None:
                self._drop(worker, "stage of no pending request", line)
            else:
                waiter[2].reached(attempt)
            return
        waiter = worker.pending.pop(ident, None)
        if waiter is None:  # its operation was already failed (worker hung, then answered)
            self._drop(worker, "reply to no pending request", line)
            return
        waiter[1].append(attempt)
        waiter[0].set()

    async def _read_replies(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        buffer = b""
        skipping = False  # inside an overlong line: drop up to its end
        async with worker.process.stdout:
            while True:
                try:
                    chunk = await worker.process.stdout.receive_some(65536)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if skipping:
                        skipping = False
                    elif len(line) > MAX_REPLY_BYTES:
                        self._drop(worker, "line too long", line)
                    else:
                        self._take_line(worker, line)
                if len(buffer) > MAX_REPLY_BYTES:
                    if not skipping:
                        self._drop(worker, "line too long", buffer)
                    buffer, skipping = b"", True
        await worker.process.wait()
        status = _exit_status(worker.process.returncode)
        replace = self._nursery is not None and self._workers[worker.number] is worker
        if replace:
            log.warning("IPMI worker %d %s; starting another", worker.number, status)
            self.restarts += 1
            # The replacement first, so an operation retried at once finds it.
            while not await self._replace(worker):
                self._kill(worker, f"IPMI worker died during the operation ({status})")
                await trio.sleep(RESTART_PAUSE)
        # Fail whatever was still pending on it (nothing when it was stopped or killed as hung).
        self._kill(worker, f"IPMI worker died during the operation ({status}); it was restarted")

    async def _replace(self, worker: _Worker) -> bool:
        try:
            await self._start_worker(worker.number)
            return True
        except OSError as exc:  # out of descriptors or memory: the head must live on
            log.error("cannot start IPMI worker %d: %s; retrying", worker.number, exc)
            return False

    async def attempt(
        self, target: PowerTarget, request: PowerRequest, progress: Progress | None = None
    ) -> Attempt:
        if not self._workers:
            raise RuntimeError("IpmiDriver.serve() is not running")
        worker = min(self._workers, key=lambda w: len(w.pending))
        ident = next(self._ids)
        event = trio.Event()
        box: list[Attempt] = []
        progress = progress if progress is not None else Progress()
        progress.reached("login")
        worker.pending[ident] = (event, box, progress)
        doc = {
            "id": ident,
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "password": target.password,
            **request.to_json(),
        }
        if progress.deadline is not None:
            # CLOCK_MONOTONIC is one clock for every process of the machine (trio's is offset).
            left = progress.deadline - trio.current_time() - COMMAND_GUARD
            doc["commands_until"] = time.monotonic() + left
        line = json.dumps(doc).encode() + b"\n"
        assert worker.process.stdin is not None
        try:
            async with worker.send_lock:
                await worker.process.stdin.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            worker.pending.pop(ident, None)
            return Attempt(False, error="IPMI worker unavailable", retryable=True)
        with trio.move_on_after(self.hung_after):
            await event.wait()
        if not box:
            log.error(
                "IPMI worker %d gave no reply in %.0f s: restarting it",
                worker.number,
                self.hung_after,
            )
            self._kill(
                worker, f"IPMI worker gave no reply in {self.hung_after:g} s; it was restarted"
            )
        return box[0]


def _exit_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
