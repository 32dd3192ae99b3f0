"""Sendfile worker processes: bulk bodies pushed from other processes, so the kernel's copy runs on other cores.

With ``http.sendfile_workers = N`` the HTTP engine keeps h11 parsing, routing,
admission and the response head in its trio loop, and hands every bulk body
(kernel, initramfs, chunk, stream) to one of N worker processes. A keep-alive
connection is bound to one worker at its first bulk body: its socket goes over
once, as a file descriptor (``SCM_RIGHTS``), and the worker keeps its copy
until the engine says the connection is over. A job is then only the
connection's number plus a list of ``(path, offset, length)`` pieces. The
worker sends them with non-blocking ``os.sendfile`` from one selector loop
(one process, many jobs at once; a job that fills its socket waits for
POLLOUT, for at most ``stall`` seconds without progress) and answers. The
engine awaits the answer, then reads the connection's next keep-alive request
as before: the socket is never written by both at once.

Wire, one ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair per worker (local, from
the engine's own process only). A message is records joined by ``\n``, a
record is fields joined by ``\0`` (paths are the engine's own store paths;
one with either byte is refused before it is sent):

    F conn                                  the connection's socket: the message's next SCM_RIGHTS fd
    J id conn stall path offset length ...  a job: send those pieces to conn's socket
    X conn                                  the connection is over: close the worker's copy
    answer: id sent outcome                 outcome "ok" | "stalled" | "missing" | "error:ENAME"

Records are queued and sent by one flusher task per worker, so the jobs that
several connections queue in one pass of the scheduler leave in one message
(one wake-up of the worker), and the worker sends the answers of one pass of
its loop in one message too. In a storm that is tens of thousands of chunk
requests: one descriptor and one message each was the engine's largest cost.

Lifetime: a worker exits at end of file on its control socket. The engine holds
the only other end, so the worker goes with the engine's process even when that
is killed with SIGKILL. The engine kills its workers by PID when it stops; a
worker that dies fails its in-flight jobs (outcome ``worker died``: the engine
closes those connections and counts them) and is replaced; connections bound
to it are bound to another worker at their next body.

    python -m cwboot.services.sendfile_worker --control-fd N
"""

from __future__ import annotations

import argparse
import array
import collections
import errno
import os
import resource
import selectors
import socket
import sys
import time
import typing
from dataclasses import dataclass, field

import trio

# Bytes one job may push before the others get their turn (fairness inside a worker).
TURN_BYTES = 1 << 20
# A message stays well under the AF_UNIX send buffer (about 208 KiB by default).
MAX_JOB_BYTES = 64 * 1024
RECV_BYTES = 2 * MAX_JOB_BYTES
# Descriptors per message (the kernel's SCM_MAX_FD is 253).
MAX_FDS = 64
# A worker that dies sooner than this after its start is replaced only after this long.
RESPAWN_BACKOFF = 1.0

Piece = tuple[str, int, int]
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


# -- the worker process


@dataclass
class _Job:
    id: int
    conn: int
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


class _WorkerState:
    """The worker's connections (their sockets), jobs in flight and answers not yet sent."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.conns: dict[int, int] = {}  # connection number -> our copy of its socket
        self.active: dict[int, _Job] = {}  # connection number -> its job in flight
        self.forgotten: set[int] = set()  # over while a job ran: close once that job ends
        self.answers: list[bytes] = []

    def finish(self, job: _Job, outcome: str) -> None:
        if job.file >= 0:
            os.close(job.file)
        if self.active.get(job.conn) is job:
            del self.active[job.conn]
        if job.conn in self.forgotten:
            self.forgotten.discard(job.conn)
            os.close(job.sock)
        self.answers.append(b"%d\0%d\0%s" % (job.id, job.sent, outcome.encode()))

    def send_answers(self) -> None:
        while self.answers:
            batch, self.answers = self.answers[:1000], self.answers[1000:]
            self.control.send(b"\n".join(batch))

    def forget(self, conn: int) -> None:
        fd = self.conns.pop(conn, None)
        if fd is None:
            return
        if conn in self.active:
            self.forgotten.add(conn)  # its job closes it
        else:
            os.close(fd)

    def receive(self, ready: collections.deque[_Job]) -> bool:
        """Take every queued record; False at end of file (the engine is gone)."""
        while True:
            try:
                # recvmsg, not socket.recv_fds: that one drops its flags argument (CPython 3.11)
                data, ancdata, flags, _ = self.control.recvmsg(
                    RECV_BYTES, _FD_SPACE, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return True
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not data and not fds:
                return False
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                # cannot happen with the engine's limits; never guess which fd is which
                for fd in fds:
                    os.close(fd)
                raise RuntimeError("truncated control message")
            given = iter(fds)
            for record in data.split(b"\n"):
                self._record(record.split(b"\0"), given, ready)
            for fd in given:  # more descriptors than F records: not ours to keep
                os.close(fd)

    def _record(self, f: list[bytes], given: typing.Iterator[int], ready: collections.deque[_Job]) -> None:
        kind = f[0]
        if kind == b"J":
            conn = int(f[2])
            pieces = [
                (os.fsdecode(f[i]), int(f[i + 1]), int(f[i + 2])) for i in range(4, len(f) - 2, 3)
            ]
            job = _Job(int(f[1]), conn, self.conns.get(conn, -1), pieces, float(f[3]))
            if job.sock < 0 or conn in self.active:
                self.answers.append(b"%d\0%d\0error:EBADF" % (job.id, 0))
                return
            self.active[conn] = job
            ready.append(job)
        elif kind == b"F":
            conn = int(f[1])
            fd = next(given)
            self.forget(conn)
            os.set_blocking(fd, False)  # already so (trio's socket; the flag is shared): never block the loop
            self.conns[conn] = fd
        elif kind == b"X":
            self.forget(int(f[1]))


def serve_jobs(control: socket.socket) -> None:
    """The worker's loop: run jobs until the control socket reaches end of file."""
    control.setblocking(True)  # answers are sent blocking; records are read with MSG_DONTWAIT
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    state = _WorkerState(control)
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
                if not state.receive(ready):
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
            state.finish(job, "stalled")
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
                state.finish(job, outcome)
        state.send_answers()


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (as nginx's worker_rlimit_nofile); returns it.

    The engine holds one socket per keep-alive connection and a worker a copy of
    each connection bound to it: a soft limit of 1024 would cap a storm at that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cwboot.services.sendfile_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--control-fd", type=int, required=True, help="the engine's socketpair end")
    args = parser.parse_args(argv)
    raise_fd_limit()  # it holds a copy of every connection bound to it
    control = socket.socket(fileno=args.control_fd)
    try:
        serve_jobs(control)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine is gone: nobody to answer
    sys.exit(0)


# -- the engine's side


class _Pending:
    """A job in flight: its connection's task sleeps until the answer (or the worker's death) wakes it."""

    __slots__ = ("task", "sent", "outcome")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.sent = 0
        self.outcome = "worker died"


@dataclass
class _Worker:
    process: trio.Process
    control: socket.socket  # non-blocking; used directly, trio only waits for readiness
    pending: dict[int, _Pending] = field(default_factory=dict)
    alive: bool = True
    outbox: list[tuple[bytes, int]] = field(default_factory=list)  # (record, dup'ed fd or -1)
    flusher: trio.lowlevel.Task | None = None  # parked, waiting for records


class Binding:
    """A connection's tie to the worker holding its socket (``SendfileWorkers.bind``)."""

    __slots__ = ("sock", "worker", "conn")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.worker: _Worker | None = None
        self.conn = 0


class SendfileWorkers:
    """N worker processes and the jobs in flight to them; ``run`` supervises, ``send`` hands a body over."""

    def __init__(self, count: int, drops: collections.Counter[str]) -> None:
        self.count = count
        self.drops = drops  # the engine's: "sendfile worker died", "no sendfile worker"
        self.workers: list[_Worker] = []
        self._next_id = 0
        self._next_conn = 0
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
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._flush, worker)
                    await self._read_answers(worker)
                    nursery.cancel_scope.cancel()
            finally:
                worker.alive = False
                self.workers.remove(worker)
                for pending in worker.pending.values():
                    trio.lowlevel.reschedule(pending.task)  # outcome stays "worker died"
                worker.pending.clear()
                for _, fd in worker.outbox:
                    if fd >= 0:
                        os.close(fd)
                worker.outbox.clear()
                trio.lowlevel.notify_closing(worker.control)
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
                data = worker.control.recv(RECV_BYTES)
            except BlockingIOError:
                delivered = 0
                await trio.lowlevel.wait_readable(worker.control)
                continue
            except OSError:
                return
            if not data:
                return
            for record in data.split(b"\n"):
                job_id, sent, outcome = record.split(b"\0")
                pending = worker.pending.pop(int(job_id), None)
                if pending is not None:
                    pending.sent, pending.outcome = int(sent), outcome.decode()
                    trio.lowlevel.reschedule(pending.task)
                delivered += 1
            if delivered >= 64:  # answers keep coming: let the woken connections run
                delivered = 0
                await trio.lowlevel.checkpoint()

    async def _flush(self, worker: _Worker) -> None:
        """Send the queued records, as few messages as the limits allow, while the worker lives."""

        def abort(_: object) -> trio.lowlevel.Abort:
            worker.flusher = None
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            if not worker.outbox:
                worker.flusher = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            records: list[bytes] = []
            fds = array.array("i")
            size = 0
            for record, fd in worker.outbox:
                if records and (size + len(record) >= MAX_JOB_BYTES or (fd >= 0 and len(fds) == MAX_FDS)):
                    break
                records.append(record)
                size += len(record) + 1
                if fd >= 0:
                    fds.append(fd)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if fds else []
            try:
                worker.control.sendmsg([b"\n".join(records)], ancillary)
            except BlockingIOError:  # its queue is full: wait, then send what is queued by then
                await trio.lowlevel.wait_writable(worker.control)
                continue
            except OSError:
                return  # the worker is gone: its supervisor sees it too
            del worker.outbox[: len(records)]
            for fd in fds:
                os.close(fd)
            await trio.lowlevel.checkpoint()

    def _queue(self, worker: _Worker, record: bytes, fd: int = -1) -> None:
        worker.outbox.append((record, fd))
        task, worker.flusher = worker.flusher, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def release(self, binding: Binding) -> None:
        """The connection is over: its worker closes its copy of the socket."""
        worker, binding.worker = binding.worker, None
        if worker is not None and worker.alive:
            self._queue(worker, b"X\0%d" % binding.conn)

    async def send(self, binding: Binding, pieces: list[Piece], stall: float) -> tuple[int, str]:
        """Have a worker send ``pieces`` to the bound socket: (bytes sent, outcome); see the module docstring."""
        worker = binding.worker
        if worker is None or not worker.alive:
            if not self.workers:  # every worker is being replaced: wait for one, bounded
                with trio.move_on_after(stall):
                    while not self.workers:
                        await self._changed.wait()
            if not self.workers:
                self.drops["no sendfile worker"] += 1
                return 0, "no sendfile worker"
            worker = min(self.workers, key=lambda w: len(w.pending))
            self._next_conn += 1
            binding.worker, binding.conn = worker, self._next_conn
            self._queue(worker, b"F\0%d" % binding.conn, os.dup(binding.sock.fileno()))
        fields = [b"J", b"%d" % (self._next_id + 1), b"%d" % binding.conn, repr(stall).encode()]
        for path, offset, length in pieces:
            raw = os.fsencode(path)
            if b"\0" in raw or b"\n" in raw:
                return 0, "error:EINVAL"  # not a store path: never put it on the wire
            fields += [raw, b"%d" % offset, b"%d" % length]
        self._next_id += 1
        job_id = self._next_id
        pending = _Pending(trio.lowlevel.current_task())
        worker.pending[job_id] = pending
        self._queue(worker, b"\0".join(fields))

        def abort(_: object) -> trio.lowlevel.Abort:
            worker.pending.pop(job_id, None)  # nobody wakes it any more
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if pending.outcome == "worker died":
            self.drops["sendfile worker died"] += 1
            binding.worker = None
        return pending.sent, pending.outcome


def jobs_of(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces cut into jobs whose message stays under MAX_JOB_BYTES."""
    jobs: list[list[Piece]] = [[]]
    size = 0
    for piece in pieces:
        cost = len(piece[0]) + 48
        if jobs[-1] and size + cost > MAX_JOB_BYTES - 128:
            jobs.append([])
            size = 0
        jobs[-1].append(piece)
        size += cost
    return [j for j in jobs if j]


if __name__ == "__main__":
    main()
