"""Sendfile worker processes: bulk bodies pushed from other processes, so the kernel's copy runs on other cores.

With ``http.sendfile_workers = N`` the HTTP engine keeps h11 parsing, routing,
admission and the response head in its trio loop, and hands every bulk body
(kernel, initramfs, chunk, stream) to one of N worker processes. A job is the
connection's socket, passed as a file descriptor (``SCM_RIGHTS``), plus a list
of ``(path, offset, length)`` pieces. The worker sends them with non-blocking
``os.sendfile`` from one selector loop (one process, many jobs at once; a job
that fills its socket waits for POLLOUT, for at most ``stall`` seconds without
progress), closes its copy of the socket and answers. The engine awaits the
answer, then reads the connection's next keep-alive request as before: the
socket is never used by both at once.

Wire, one ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair per worker (local, from
the engine's own process only):

    job     JSON {"id": n, "stall": seconds, "pieces": [[path, offset, length], ...]} + one fd
    answer  JSON {"id": n, "sent": bytes, "outcome": "ok" | "stalled" | "missing" | "error:ENAME"}

Lifetime: a worker exits at end of file on its control socket. The engine holds
the only other end, so the worker goes with the engine's process even when that
is killed with SIGKILL. The engine kills its workers by PID when it stops; a
worker that dies fails its in-flight jobs (outcome ``worker died``: the engine
closes those connections and counts them) and is replaced.

    python -m cwboot.services.sendfile_worker --control-fd N
"""

from __future__ import annotations

import argparse
import array
import collections
import errno
import json
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

import trio

# Bytes one job may push before the others get their turn (fairness inside a worker).
TURN_BYTES = 1 << 20
# A job message stays well under the AF_UNIX send buffer (about 208 KiB by default).
MAX_JOB_BYTES = 64 * 1024
RECV_BYTES = 2 * MAX_JOB_BYTES
# A worker that dies sooner than this after its start is replaced only after this long.
RESPAWN_BACKOFF = 1.0

Piece = tuple[str, int, int]
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)  # one descriptor per job


# -- the worker process


@dataclass
class _Job:
    id: int
    sock: int
    pieces: list[Piece]
    stall: float
    index: int = 0
    file: int = -1
    offset: int = 0
    end: int = 0
    sent: int = 0
    deadline: float = 0.0


_BLOCKED = "blocked"  # the socket is full: wait for POLLOUT
_TURN_OVER = "turn over"  # TURN_BYTES pushed: back of the queue


def _advance(job: _Job) -> str:
    """Push bytes until the socket is full, the turn is over, or the job ends (its outcome)."""
    pushed = 0
    try:
        while True:
            if job.file < 0:
                if job.index == len(job.pieces):
                    return "ok"
                path, job.offset, length = job.pieces[job.index]
                job.end = job.offset + length
                try:
                    job.file = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return "missing"  # quarantined or removed meanwhile: never send other bytes
            if job.offset >= job.end:
                os.close(job.file)
                job.file = -1
                job.index += 1
                continue
            if pushed >= TURN_BYTES:
                return _TURN_OVER
            try:
                n = os.sendfile(job.sock, job.file, job.offset, job.end - job.offset)
            except BlockingIOError:
                return _BLOCKED
            if n == 0:
                return "error:EPIPE"  # file shorter than its manifest says, or the peer is gone
            job.offset += n
            job.sent += n
            pushed += n
    except OSError as exc:
        return f"error:{errno.errorcode.get(exc.errno or 0, 'EIO')}"


def _finish(control: socket.socket, job: _Job, outcome: str) -> None:
    if job.file >= 0:
        os.close(job.file)
    os.close(job.sock)
    answer = {"id": job.id, "sent": job.sent, "outcome": outcome}
    control.send(json.dumps(answer, separators=(",", ":")).encode())


def _receive_jobs(control: socket.socket, ready: collections.deque[_Job]) -> bool:
    """Take every queued job; False at end of file (the engine is gone)."""
    while True:
        try:
            # recvmsg, not socket.recv_fds: that one drops its flags argument (CPython 3.11)
            data, ancdata, flags, _ = control.recvmsg(RECV_BYTES, _FD_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not data and not fds:
            return False
        doc = json.loads(data)
        job = _Job(doc["id"], fds[0] if fds else -1, [tuple(p) for p in doc["pieces"]], doc["stall"])
        if job.sock < 0 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"id": job.id, "sent": 0, "outcome": "error:EBADMSG"}).encode())
            continue
        os.set_blocking(job.sock, False)  # already so (trio's socket; the flag is shared): never block the loop
        ready.append(job)


def serve_jobs(control: socket.socket) -> None:
    """The worker's loop: run jobs until the control socket reaches end of file."""
    control.setblocking(True)  # answers are sent blocking; jobs are read with MSG_DONTWAIT
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    ready: collections.deque[_Job] = collections.deque()
    blocked: dict[int, _Job] = {}
    while True:
        now = time.monotonic()
        if ready:
            timeout: float | None = 0.0
        elif blocked:
            timeout = max(0.0, min(j.deadline for j in blocked.values()) - now)
        else:
            timeout = None
        for key, _ in selector.select(timeout):
            if key.data is None:
                if not _receive_jobs(control, ready):
                    return
            else:
                job = key.data
                selector.unregister(job.sock)
                del blocked[job.sock]
                ready.append(job)
        now = time.monotonic()
        for job in [j for j in blocked.values() if j.deadline <= now]:
            selector.unregister(job.sock)
            del blocked[job.sock]
            _finish(control, job, "stalled")
        for _ in range(len(ready)):
            job = ready.popleft()
            outcome = _advance(job)
            if outcome == _BLOCKED:
                job.deadline = now + job.stall
                blocked[job.sock] = job
                selector.register(job.sock, selectors.EVENT_WRITE, job)
            elif outcome == _TURN_OVER:
                ready.append(job)
            else:
                _finish(control, job, outcome)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cwboot.services.sendfile_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--control-fd", type=int, required=True, help="the engine's socketpair end")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    try:
        serve_jobs(control)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine is gone: nobody to answer
    sys.exit(0)


# -- the engine's side


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    sent: int = 0
    outcome: str = "worker died"


@dataclass
class _Worker:
    process: trio.Process
    control: socket.socket  # non-blocking; used directly, trio only waits for readiness (fewer yields per job)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    pending: dict[int, _Pending] = field(default_factory=dict)
    alive: bool = True


class SendfileWorkers:
    """N worker processes and the jobs in flight to them; ``run`` supervises, ``send`` hands a body over."""

    def __init__(self, count: int, drops: collections.Counter[str]) -> None:
        self.count = count
        self.drops = drops  # the engine's: "sendfile worker died", "no sendfile worker"
        self.workers: list[_Worker] = []
        self._next_id = 0
        self._changed = trio.Event()

    def pids(self) -> list[int]:
        """PIDs of the live workers (tests kill one; people see them in ps)."""
        return [w.process.pid for w in self.workers if w.alive]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, replace any that dies; kill them all by PID when cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.count):
                await nursery.start(self._supervise)
            task_status.started()

    async def _supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        while True:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                # close_fds (the default): no other child ever holds ``ours``, so its end of
                # file reaches the worker the moment this process is gone.
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "cwboot.services.sendfile_worker", "--control-fd", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            worker = _Worker(process, ours)
            self.workers.append(worker)
            self._wake()
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            started = trio.current_time()
            try:
                await self._read_answers(worker)
            finally:
                worker.alive = False
                self.workers.remove(worker)
                for pending in worker.pending.values():
                    pending.done.set()  # outcome stays "worker died"
                worker.pending.clear()
                trio.lowlevel.notify_closing(worker.control)  # a sender waiting on it gets an error
                worker.control.close()
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
            if trio.current_time() - started < RESPAWN_BACKOFF:
                await trio.sleep(RESPAWN_BACKOFF)

    async def _read_answers(self, worker: _Worker) -> None:
        delivered = 0
        while True:
            try:
                data = worker.control.recv(4096)
            except BlockingIOError:
                delivered = 0
                await trio.lowlevel.wait_readable(worker.control)
                continue
            except OSError:
                return
            if not data:
                return
            answer = json.loads(data)
            pending = worker.pending.pop(answer["id"], None)
            if pending is not None:
                pending.sent, pending.outcome = answer["sent"], answer["outcome"]
                pending.done.set()
            delivered += 1
            if delivered % 64 == 0:  # answers keep coming: let the woken connections run
                await trio.lowlevel.checkpoint()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(
        self, sock: trio.socket.SocketType, pieces: list[Piece], stall: float
    ) -> tuple[int, str]:
        """Have a worker send ``pieces`` to ``sock``: (bytes sent, outcome); see the module docstring."""
        if not self.workers:  # every worker is being replaced: wait for one, bounded
            with trio.move_on_after(stall):
                while not self.workers:
                    await self._changed.wait()
        if not self.workers:
            self.drops["no sendfile worker"] += 1
            return 0, "no sendfile worker"
        worker = min(self.workers, key=lambda w: len(w.pending))
        self._next_id += 1
        job_id = self._next_id
        pending = _Pending()
        worker.pending[job_id] = pending
        message = [json.dumps({"id": job_id, "stall": stall, "pieces": pieces}, separators=(",", ":")).encode()]
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
        try:
            try:
                worker.control.sendmsg(message, fds)
            except BlockingIOError:  # its queue is full: wait, one sender at a time (trio's rule)
                async with worker.send_lock:
                    while True:
                        await trio.lowlevel.wait_writable(worker.control)
                        try:
                            worker.control.sendmsg(message, fds)
                            break
                        except BlockingIOError:
                            continue
            await pending.done.wait()
        except (OSError, trio.ClosedResourceError):
            pass  # the worker is gone (its supervisor sees it too): the outcome stays "worker died"
        finally:
            worker.pending.pop(job_id, None)
        if pending.outcome == "worker died":
            self.drops["sendfile worker died"] += 1
        return pending.sent, pending.outcome


def jobs_of(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces cut into jobs whose message stays under MAX_JOB_BYTES."""
    jobs: list[list[Piece]] = [[]]
    size = 0
    for piece in pieces:
        cost = len(piece[0]) + 48
        if jobs[-1] and size + cost > MAX_JOB_BYTES:
            jobs.append([])
            size = 0
        jobs[-1].append(piece)
        size += cost
    return [j for j in jobs if j]


if __name__ == "__main__":
    main()
