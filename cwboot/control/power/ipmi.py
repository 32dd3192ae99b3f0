"""The IPMI driver, head side: worker processes running pyghmi, spoken to over pipes.

``await nursery.start(IpmiDriver(...).serve)`` starts ``processes`` copies of
cwboot.control.power.ipmi_worker, each with ``threads`` threads, and hands
requests to the least busy. Replies are matched to requests by id. A worker
that stops answering (no reply within ``hung_after`` seconds) is killed and
replaced; its in-flight operations fail with "IPMI worker restarted".
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

from cwboot.control.power.driver import Attempt
from cwboot.control.power.request import PowerRequest, PowerTarget

log = logging.getLogger(__name__)

# Longest pyghmi can take for one operation before it gives up on its own is
# well under this (login ~4.6 s, a few commands); past it the worker is hung.
HUNG_AFTER = 60.0
# On shutdown, seconds the workers get to finish (and log out) running operations.
SHUTDOWN_GRACE = 10.0


@dataclass
class _Worker:
    number: int
    process: trio.Process
    pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = field(default_factory=dict)
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
    ) -> None:
        self.processes = max(1, processes)
        self.threads = max(1, threads)
        self.pyghmi_fixes = pyghmi_fixes
        self.hung_after = hung_after
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.restarts = 0

    def _argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "cwboot.control.power.ipmi_worker",
            "--threads",
            str(self.threads),
        ]
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
            self._kill(worker)
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

    def _kill(self, worker: _Worker) -> None:
        if worker.process.returncode is None:
            worker.process.kill()
        for event, box in worker.pending.values():
            box.append({"ok": False, "error": "IPMI worker restarted", "retryable": False})
            event.set()
        worker.pending.clear()

    async def _read_replies(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        buffer = b""
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
                    reply = json.loads(line)
                    waiter = worker.pending.pop(reply.pop("id"), None)
                    if waiter is not None:
                        waiter[1].append(reply)
                        waiter[0].set()
        await worker.process.wait()
        self._kill(worker)  # fail whatever was still pending on it
        if self._nursery is not None and self._workers[worker.number] is worker:
            log.warning(
                "IPMI worker %d exited with %s; starting another",
                worker.number,
                worker.process.returncode,
            )
            self.restarts += 1
            await self._start_worker(worker.number)

    async def attempt(self, target: PowerTarget, request: PowerRequest) -> Attempt:
        if not self._workers:
            raise RuntimeError("IpmiDriver.serve() is not running")
        worker = min(self._workers, key=lambda w: len(w.pending))
        ident = next(self._ids)
        event = trio.Event()
        box: list[dict[str, Any]] = []
        worker.pending[ident] = (event, box)
        line = (
            json.dumps(
                {
                    "id": ident,
                    "host": target.host,
                    "port": target.port,
                    "user": target.user,
                    "password": target.password,
                    **request.to_json(),
                }
            ).encode()
            + b"\n"
        )
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
            self._kill(worker)
        reply = box[0]
        return Attempt(
            ok=reply["ok"],
            state=reply.get("state", ""),
            bootdev=reply.get("bootdev", ""),
            error=reply.get("error", ""),
            retryable=reply.get("retryable", False),
        )
