"""The HTTP boot engine: iPXE scripts, kernels, initramfs files and root filesystems, on trio.

Machinery: cwboot.protocol.http1 parses requests and writes response heads; bulk bodies go out
with ``os.sendfile`` straight from the stored files to the socket (zero
user-space copies; stored zstd frames are sent as they are, never
recompressed). The head goes out with ``MSG_MORE`` so the kernel packs it
with the first body bytes. Memory per connection is a few kilobytes whatever
the image size: a stream is a walk over the manifest, one chunk file open at a
time. With ``http.sendfile_workers`` > 0 the sendfile calls run in worker
processes instead (cwboot.services.sendfile_worker): this loop hands them the
socket and the pieces, and awaits their answer.

URL layout (``GET`` and ``HEAD`` unless noted; docs/images.md has the details):

    /boot/ipxe/{mac}                    iPXE script (mac as aa-bb-cc-dd-ee-ff)
    /boot/loader/{file}                 iPXE loaders (ipxe.efi ...) for UEFI HTTP boot
    /boot/kernel/{ref}                  stored file by id or alias
    /boot/initramfs/{ref}               stored file by id or alias
    /images/{name}/{version}/stream     concatenated zstd frames (version may be 'latest')
    /images/{name}/{version}/manifest   JSON manifest
    /images/{name}/{version}/manifest.txt   shell-friendly manifest (id raw zsize per line)
    /chunks/{id}                        one stored zstd frame
    POST /boot/status/{mac}             node stage report (form or JSON body) -> 204

Every static answer has an ETag (content-addressed ids, or a hash of the
manifest for streams) and honours If-None-Match (304) and single Range
requests (206/416; cwboot.protocol.http_range). Streams, chunks, kernels
and initramfs files count against ``http.max_streams``: beyond it a request queues, first come first
served, for up to ``http.max_wait`` seconds; only when that wait expires (or
``http.max_queued`` requests already wait) is the answer ``503`` with
``Retry-After`` (mount_rootfs waits that long plus jitter). Queueing keeps the
link busy: a refused node sleeps seconds, a queued one starts the moment a
slot frees.
"""

from __future__ import annotations

import collections
import errno
import http
import json
import logging
import os
import re
import socket as _socket
import stat
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
import xxhash

from cwboot.config import Config
from cwboot.control.objects import InvalidObject, normalize_mac
from cwboot.protocol import http1, http_range, ipxe
from cwboot.protocol.manifest import Manifest
from cwboot.services.sendfile_worker import Binding, SendfileWorkers, jobs_of, raise_fd_limit

log = logging.getLogger(__name__)

# Connections taken from the listen queue per wake-up.
ACCEPT_BATCH = 256
DEFAULT_LOADER_DIR = Path("/usr/lib/ipxe")
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may wait for its next request
SEND_STALL_TIMEOUT = 60.0  # seconds a client may leave its receive window closed
MAX_STATUS_BODY = 8192
MAX_PENDING_REPORTS = 1024
MAX_CHUNK_PATHS = 1 << 16
RETRY_AFTER = 2
_SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ObjectLookup(Protocol):
    """What the engine reads objects through (cwboot.control.cache.ObjectCache)."""

    def node_by_mac(self, mac: str) -> dict[str, Any] | None: ...

    def get(self, kind: str, ref: str) -> dict[str, Any] | None: ...


class ImageSource(Protocol):
    """What the engine reads bytes through (cwboot.control.images.ImageStore)."""

    def resolve(self, name: str, version: str = "latest") -> Manifest | None: ...

    def chunk_path(self, cid: str) -> Path | None: ...

    def chunk_fspath(self, cid: str) -> str | None: ...

    def file_path(self, ref: str) -> Path | None: ...


ReportStatus = Callable[[str, dict[str, str]], Awaitable[None]]


@dataclass
class HttpStats:
    requests: int = 0
    bytes_sent: int = 0
    responses: collections.Counter[int] = field(default_factory=collections.Counter)
    # reason -> count of requests or connections dropped/refused
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    active_streams: int = 0
    connections: int = 0


@dataclass
class HttpServer:
    address: str
    port: int
    stats: HttpStats
    # The sendfile worker processes (``http.sendfile_workers``), None when bodies go out from here.
    sendfile_workers: SendfileWorkers | None = None


class _FileBody:
    """A static file sent with sendfile."""

    def __init__(self, path: str | Path, size: int) -> None:
        self.path = path
        self.size = size

    def pieces_for(self, start: int, stop: int) -> Iterable[tuple[str | Path | None, int, int]]:
        return [(self.path, start, stop - start)]


class _StreamBody(_FileBody):
    """An image stream: the manifest's frames back to back, resolved to chunk files per range."""

    def __init__(self, m: Manifest, images: ImageSource) -> None:
        self.manifest = m
        self.images = images
        self.size = m.compressed_size

    def pieces_for(self, start: int, stop: int) -> Iterable[tuple[str | Path | None, int, int]]:
        for chunk, offset, length in self.manifest.slices(start, stop):
            yield self.images.chunk_fspath(chunk.id), offset, length


@dataclass
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | _FileBody = b""
    etag: bytes | None = None
    bulk: bool = False  # counts against max_streams


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _text(status: int, text: str, ctype: bytes = b"text/plain; charset=utf-8") -> _Reply:
    return _Reply(status, [(b"content-type", ctype)], text.encode())


class _Engine:
    def __init__(
        self,
        config: Config,
        lookup: ObjectLookup,
        images: ImageSource,
        heads: Callable[[], Sequence[str]],
        report_status: ReportStatus | None,
        loader_dir: Path,
        send_stall_timeout: float = SEND_STALL_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.config = config
        self.send_stall_timeout = send_stall_timeout
        self.lookup = lookup
        self.images = images
        self.heads = heads
        self.report_status = report_status
        self.loader_dir = loader_dir
        self.stats = HttpStats()
        # None: bulk bodies are sent from the trio thread; a limiter: from up to that many worker threads
        self.bulk_threads: trio.CapacityLimiter | None = None
        # None: as above; else bulk bodies go out from these worker processes (other cores)
        self.sendfile_workers: SendfileWorkers | None = None
        self.max_streams = config.http.max_streams
        self.max_wait = config.http.max_wait
        self.max_queued = config.http.max_queued
        # trio's Semaphore wakes waiters in FIFO order: no node starves.
        self.stream_slots = trio.Semaphore(max(config.http.max_streams, 0))
        self._etags: dict[tuple[str, str], tuple[Manifest, bytes]] = {}
        self._chunk_paths: dict[str, str] = {}  # chunk id -> its file (existence is checked per request)
        self.idle_timeout = idle_timeout
        # Connections waiting for a request (head or body): since when, and what a timeout is called.
        # One sweeper enforces the timeout: a cancel scope per request was a visible share of the loop.
        self.waiting: dict[_Connection, float] = {}
        self.reports: trio.MemorySendChannel[tuple[str, dict[str, str]]]
        self.reports_rx: trio.MemoryReceiveChannel[tuple[str, dict[str, str]]]
        self.reports, self.reports_rx = trio.open_memory_channel(MAX_PENDING_REPORTS)

    # -- admission control

    async def admit(self) -> str | None:
        """Take a stream slot, queueing up to ``max_wait`` s; None, or why the request is refused."""
        slots = self.stream_slots
        if self.max_streams <= 0:
            return "max_streams is 0 (503)"
        if slots.value == 0 and slots.statistics().tasks_waiting >= self.max_queued:
            return "admission queue full (503)"
        try:
            # A free slot means nobody waits (trio hands a released slot straight to the
            # first waiter): take it without the cost of a cancel scope, FIFO order intact.
            slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.CancelScope(deadline=trio.current_time() + self.max_wait):
                await slots.acquire()
                self.stats.active_streams += 1
                return None
            return "admission wait expired (503)"
        self.stats.active_streams += 1
        return None

    def release(self) -> None:
        self.stats.active_streams -= 1
        self.stream_slots.release()

    async def sweep_idle(self) -> None:
        """Cut the connections that waited longer than ``idle_timeout`` for their request."""
        while True:
            await trio.sleep(max(self.idle_timeout / 8, 0.01))
            deadline = trio.current_time() - self.idle_timeout
            for conn in [c for c, since in self.waiting.items() if since <= deadline]:
                del self.waiting[conn]
                conn.scope.cancel()

    # -- routing (pure with respect to the socket)

    def route(
        self, method: bytes, target: bytes, body: bytes, headers: dict[bytes, bytes]
    ) -> _Reply:
        path = urllib.parse.unquote(target.split(b"?", 1)[0].decode("latin-1"))
        parts = path.strip("/").split("/")
        if method == b"POST":
            if len(parts) == 3 and parts[:2] == ["boot", "status"]:
                return self._status(parts[2], body, headers.get(b"content-type", b""))
            return _text(405, "method not allowed\n")
        if method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed\n")
        match parts:
            case ["boot", "ipxe", mac]:
                return self._script(mac)
            case ["boot", "loader", name] if _SAFE_FILE_RE.match(name):
                return self._file(self.loader_dir / name, b"application/octet-stream")
            case ["boot", ("kernel" | "initramfs"), ref]:
                found = self.images.file_path(ref)
                reply = self._file(
                    found, b"application/octet-stream", etag_id=found.name if found else ""
                )
                # Under the stream budget too: a thousand nodes fetching 12 MiB each at once
                # overflowed the nodes' receive queues (TCP drops, retransmission timeouts).
                reply.bulk = True
                return reply
            case ["images", name, version, ("stream" | "manifest" | "manifest.txt") as what]:
                return self._image(name, version, what)
            case ["chunks", cid]:
                # The storm's hot path: the id's path is remembered, so a request costs one stat.
                cpath = self._chunk_paths.get(cid)
                if cpath is None:
                    cpath = self.images.chunk_fspath(cid)
                    if cpath is not None:
                        if len(self._chunk_paths) >= MAX_CHUNK_PATHS:
                            self._chunk_paths.clear()
                        self._chunk_paths[cid] = cpath
                reply = self._file(cpath, b"application/zstd", etag_id=cid)
                if reply.status == 404:
                    self._chunk_paths.pop(cid, None)  # quarantined or removed since
                reply.bulk = True
                return reply
        return _text(404, "not found\n")

    def _script(self, mac_text: str) -> _Reply:
        try:
            mac = normalize_mac(mac_text)
        except InvalidObject:
            self.stats.drops["bad mac in script URL"] += 1
            return _text(404, "bad MAC\n")
        node = self.lookup.node_by_mac(mac)
        if node is None:
            return _text(404, "unknown node\n")
        bc = self.lookup.get("boot_config", node.get("boot_config") or "default")
        if bc is None or not bc.get("kernel"):
            return _text(
                200, ipxe.render_exit(mac, "no boot config with a kernel; next boot device")
            )
        version = ""
        if bc.get("image"):
            # The image store's index is the one source of truth for "latest": a
            # rollback or import is served at once, API reachable or not (the
            # ``image`` object's ``latest`` is only its mirror, for people).
            # The script names the version it resolved, so a node that boots
            # across a rollback still fetches one consistent version.
            image, pinned = str(bc["image"]), str(bc.get("image_version") or "")
            m = self.images.resolve(image, pinned or "latest")
            if m is None:
                if pinned:
                    why = f"image {image} has no version {pinned} on this head"
                    self.stats.drops["pinned image version not published"] += 1
                else:
                    why = f"image {image} has no published version on this head"
                    self.stats.drops["image not published"] += 1
                return _text(503, f"{why}\n")
            version = m.version
        try:
            script = ipxe.render(ipxe.spec_for(mac, node, bc, version), list(self.heads()))
        except ipxe.ScriptError as exc:
            self.stats.drops["unsafe boot config"] += 1
            return _text(500, f"cannot render a safe script: {exc}\n")
        return _Reply(
            200,
            [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")],
            script.encode(),
        )

    def _file(self, path: str | Path | None, ctype: bytes, *, etag_id: str = "") -> _Reply:
        if path is None:
            return _text(404, "not found\n")
        try:
            st = os.stat(path)
        except OSError:
            return _text(404, "not found\n")
        if not stat.S_ISREG(st.st_mode):
            return _text(404, "not found\n")
        etag = f'"{etag_id or f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"}"'.encode()
        return _Reply(200, [(b"content-type", ctype)], _FileBody(path, st.st_size), etag)

    def _image(self, name: str, version: str, what: str) -> _Reply:
        m = self.images.resolve(name, version)
        if m is None:
            return _text(404, "no such image version\n")
        if what == "manifest":
            return _Reply(
                200, [(b"content-type", b"application/json")], m.to_json(), self._manifest_etag(m)
            )
        if what == "manifest.txt":
            return _Reply(
                200, [(b"content-type", b"text/plain")], m.to_text(), self._manifest_etag(m) + b"t"
            )
        return _Reply(
            200,
            [(b"content-type", b"application/zstd")],
            _StreamBody(m, self.images),
            self._manifest_etag(m),
            bulk=True,
        )

    def _manifest_etag(self, m: Manifest) -> bytes:
        key = (m.name, m.version)
        cached = self._etags.get(key)
        if cached is None or cached[0] is not m:
            cached = (m, f'"{xxhash.xxh3_64_hexdigest(m.to_json())}"'.encode())
            self._etags[key] = cached
        return cached[1]

    def _status(self, mac_text: str, body: bytes, ctype: bytes) -> _Reply:
        try:
            mac = normalize_mac(mac_text)
            fields = _status_fields_untrusted(body, ctype)
        except (InvalidObject, ValueError):
            self.stats.drops["bad status report"] += 1
            return _text(400, "bad status report\n")
        if self.report_status is not None:
            try:
                self.reports.send_nowait((mac, fields))
            except trio.WouldBlock:
                self.stats.drops["status reports backlog full"] += 1
                return _text(503, "busy\n")
        return _Reply(204, [])

    async def report_loop(self) -> None:
        assert self.report_status is not None
        async for mac, fields in self.reports_rx:
            try:
                await self.report_status(mac, fields)
            except Exception:  # a failing store write must not take the engine down
                self.stats.drops["status callback failed"] += 1


def _status_fields_untrusted(body: bytes, ctype: bytes) -> dict[str, str]:
    """A status POST body (JSON object or form) -> {field: text}; ValueError otherwise."""
    if len(body) > MAX_STATUS_BODY:
        raise ValueError("status body too large")
    text = body.decode("utf-8")
    if ctype.split(b";")[0].strip() == b"application/json":
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        items: Iterable[tuple[Any, Any]] = doc.items()
    else:
        items = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str) or not re.match(r"^[a-z][a-z0-9_]{0,31}$", k):
            raise ValueError(f"bad field name {k!r}")
        out[k] = str(v)[:512]
    if len(out) > 32:
        raise ValueError("too many fields")
    return out


class _Connection:
    def __init__(self, engine: _Engine, raw: _socket.socket) -> None:
        self.engine = engine
        self.raw = raw  # non-blocking; read and written directly, trio only waits for readiness
        self.sock = trio.socket.from_stdlib_socket(raw)
        self.buf = bytearray()  # bytes received and not yet parsed
        self.binding: Binding | None = None  # its sendfile worker, once it sent a body through one
        self.scope = trio.CancelScope()  # cancelled by the engine's idle sweeper
        self.waiting_for = ""  # the drop reason if that happens

    async def _recv(self) -> bool:
        """More bytes into ``buf``; False at end of file. Raises trio.Cancelled at a deadline."""
        while True:
            try:
                data = self.raw.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.raw)
                continue
            self.buf += data
            return bool(data)

    async def _sendall(self, data: bytes | memoryview, flags: int = 0) -> None:
        # Straight to the non-blocking socket: a response head or a small body nearly
        # always fits in one send, and a cancel scope per send was a tenth of the
        # engine's time in a storm. Only a full socket waits, for at most the stall timeout.
        view = memoryview(data)
        while view:
            try:
                sent = self.raw.send(view, flags)
            except BlockingIOError:
                with trio.fail_after(self.engine.send_stall_timeout):
                    await trio.lowlevel.wait_writable(self.raw)
                continue
            view = view[sent:]
            self.engine.stats.bytes_sent += sent

    async def _read_head(self) -> http1.RequestHead | None:
        """The next request head (None: the client closed); the idle sweeper bounds the wait."""
        parsed = http1.parse_head_untrusted(self.buf)
        if parsed is None:
            waiting = self.engine.waiting
            waiting[self] = trio.current_time()
            self.waiting_for = "idle keep-alive timeout"
            try:
                while parsed is None:
                    if not await self._recv():
                        if self.buf.strip():
                            self.engine.stats.drops["incomplete request"] += 1
                        return None
                    parsed = http1.parse_head_untrusted(self.buf)
            finally:
                waiting.pop(self, None)
        else:  # pipelined: it was already here; let the other connections run first
            await trio.lowlevel.checkpoint()
        assert parsed is not None
        request, used = parsed
        del self.buf[:used]
        return request

    async def _read_body(self, request: http1.RequestHead) -> bytes | None:
        """The request's body (None: the client went away or was too slow, counted)."""
        if not request.chunked and request.content_length > MAX_STATUS_BODY:
            raise http1.BadRequest("request body too large", 413)
        waiting = self.engine.waiting
        waiting[self] = trio.current_time()
        self.waiting_for = "slow request body"
        try:
            if request.chunked:
                while (got := http1.parse_chunked_untrusted(self.buf, MAX_STATUS_BODY)) is None:
                    if not await self._recv():
                        return None
                body, used = got
                del self.buf[:used]
                return body
            while len(self.buf) < request.content_length:
                if not await self._recv():
                    return None
            body = bytes(self.buf[: request.content_length])
            del self.buf[: request.content_length]
            return body
        finally:
            waiting.pop(self, None)

    async def run(self) -> None:
        try:
            with self.scope:
                await self._serve()
            if self.scope.cancelled_caught:
                self.engine.stats.drops[self.waiting_for] += 1
        finally:  # counted first: a client that sees the close sees the counter too
            if self.binding is not None and self.engine.sendfile_workers is not None:
                self.engine.sendfile_workers.release(self.binding)
            self.sock.close()

    async def _serve(self) -> None:
        stats = self.engine.stats
        request: http1.RequestHead | None = None
        try:
            while True:
                request = await self._read_head()
                if request is None:
                    return
                body = b""
                if request.content_length or request.chunked:
                    got = await self._read_body(request)
                    if got is None:
                        return
                    body = got
                await self._respond(request, body)
                if not request.keep_alive:
                    return
        except http1.BadRequest as exc:
            if exc.status == 413:
                stats.drops["request body too large"] += 1
            else:
                stats.drops["malformed request"] += 1
            try:
                await self._send_simple(_text(exc.status, f"{exc}\n"), request)
            except (OSError, trio.TooSlowError):
                pass
        except trio.TooSlowError:
            stats.drops["send stalled (client stopped reading)"] += 1
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            stats.drops["connection error"] += 1
        except Exception:  # a bug must cost one connection, never the engine
            stats.drops["internal error"] += 1
            log.exception("HTTP connection failed")

    async def _send_simple(self, reply: _Reply, request: http1.RequestHead | None) -> None:
        """An error answer, then the connection closes."""
        assert isinstance(reply.body, bytes)
        self.engine.stats.responses[reply.status] += 1
        head = [
            (b"server", b"cwboot"),
            *reply.headers,
            (b"content-length", b"%d" % len(reply.body)),
            (b"connection", b"close"),
        ]
        data = http1.response_head(reply.status, _reason(reply.status), head)
        if request is None or request.method != b"HEAD":
            data += reply.body
        await self._sendall(data)

    async def _respond(self, request: http1.RequestHead, body: bytes) -> None:
        engine = self.engine
        engine.stats.requests += 1
        reply = engine.route(request.method, request.target, body, request.headers)
        admitted = False
        if reply.bulk and reply.status == 200:
            refusal = await engine.admit()
            if refusal is None:
                admitted = True
            else:
                engine.stats.drops[refusal] += 1
                reply = _text(503, "busy, retry later\n")
                reply.headers.append((b"retry-after", str(RETRY_AFTER).encode()))
        try:
            await self._send_reply(request, reply)
        finally:
            if admitted:
                engine.release()

    async def _send_reply(self, request: http1.RequestHead, reply: _Reply) -> None:
        engine = self.engine
        headers = request.headers
        out = [(b"server", b"cwboot"), *reply.headers]
        start, stop = 0, 0
        status = reply.status
        body = reply.body
        size = body.size if isinstance(body, _FileBody) else len(body)
        if reply.etag is not None and status == 200:
            d = http_range.decide(
                size,
                reply.etag,
                range_header=headers.get(b"range") if isinstance(body, _FileBody) else None,
                if_none_match=headers.get(b"if-none-match"),
                if_range=headers.get(b"if-range"),
            )
            status, start, stop = d.status, d.start, d.stop
            out += [(b"etag", reply.etag), (b"accept-ranges", b"bytes"), *d.headers]
        else:
            stop = size
        if status in (304, 416):
            start = stop = 0
        if status != 304:  # a 304 has no body and so no length of its own (RFC 9110 §8.6)
            out.append((b"content-length", b"%d" % (stop - start)))
        if not request.keep_alive:
            out.append((b"connection", b"close"))
        engine.stats.responses[status] += 1
        head = http1.response_head(status, _reason(status), out)
        send_body = request.method != b"HEAD" and stop > start
        if send_body and not isinstance(body, _FileBody):
            await self._sendall(head + body[start:stop])
            return
        await self._sendall(head, _socket.MSG_MORE if send_body else 0)
        if send_body:
            assert isinstance(body, _FileBody)
            await self._sendfile_body(body, start, stop)

    async def _sendfile_body(self, body: _FileBody, start: int, stop: int) -> None:
        if self.engine.sendfile_workers is not None:
            await self._sendfile_by_worker(self.engine.sendfile_workers, body, start, stop)
            return
        if self.engine.bulk_threads is not None:
            async with self.engine.bulk_threads:
                sent = await trio.to_thread.run_sync(
                    _send_pieces_blocking,
                    self.sock.fileno(),
                    body,
                    start,
                    stop,
                    self.engine.send_stall_timeout,
                )
            self.engine.stats.bytes_sent += sent
            if sent < stop - start:
                self.engine.stats.drops["chunk missing mid-stream"] += 1
                raise OSError(errno.ENOENT, "chunk missing")
            return
        sockfd = self.sock.fileno()
        for path, offset, length in body.pieces_for(start, stop):
            if path is None:
                # a chunk vanished (quarantined by verify): cut the response, never send wrong bytes
                self.engine.stats.drops["chunk missing mid-stream"] += 1
                raise OSError(errno.ENOENT, "chunk missing")
            fd = os.open(path, os.O_RDONLY)
            waited = False
            try:
                end = offset + length
                while offset < end:
                    try:
                        sent = os.sendfile(sockfd, fd, offset, end - offset)
                    except BlockingIOError:
                        with trio.fail_after(self.engine.send_stall_timeout):
                            await trio.lowlevel.wait_writable(self.sock)
                        waited = True
                        continue
                    if sent == 0:
                        raise OSError(errno.EPIPE, "file shorter than expected or peer gone")
                    offset += sent
                    self.engine.stats.bytes_sent += sent
            finally:
                os.close(fd)
            if not waited:  # a fast reader never blocks us: let the other connections run
                await trio.lowlevel.checkpoint()

    async def _sendfile_by_worker(
        self, workers: SendfileWorkers, body: _FileBody, start: int, stop: int
    ) -> None:
        """Hand the body to a worker process; this task (and the socket) waits for its answer."""
        stats = self.engine.stats
        pieces: list[tuple[str, int, int]] = []
        missing = False
        for path, offset, length in body.pieces_for(start, stop):
            if path is None:  # send what precedes it, then cut the response (as below)
                missing = True
                break
            pieces.append((os.fspath(path), offset, length))
        if self.binding is None:
            self.binding = Binding(self.sock)  # tied to a worker at its first job
        for job in jobs_of(pieces):
            sent, outcome = await workers.send(self.binding, job, self.engine.send_stall_timeout)
            stats.bytes_sent += sent
            if outcome == "missing":  # vanished after the list was made
                missing = True
                break
            if outcome == "stalled":
                raise trio.TooSlowError
            if outcome != "ok":
                raise OSError(errno.EIO, f"sendfile worker: {outcome}")
        if missing:
            stats.drops["chunk missing mid-stream"] += 1
            raise OSError(errno.ENOENT, "chunk missing")


def _send_pieces_blocking(
    sockfd: int, body: _FileBody, start: int, stop: int, stall_timeout: float
) -> int:
    """Worker-thread variant: blocking sendfile of every piece; returns bytes sent.

    The socket is blocking only while this runs (the trio task is parked awaiting
    it), with SO_SNDTIMEO bounding a stalled peer. Stops early at a missing chunk.
    """
    sent_total = 0
    os.set_blocking(sockfd, True)
    sock = _socket.socket(fileno=sockfd)
    try:
        whole = int(stall_timeout)
        sndtimeo = struct.pack("ll", whole, int((stall_timeout - whole) * 1e6))
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, sndtimeo)
        for path, offset, length in body.pieces_for(start, stop):
            if path is None:
                return sent_total
            with open(path, "rb") as f:
                end = offset + length
                while offset < end:
                    sent = os.sendfile(sockfd, f.fileno(), offset, end - offset)
                    if sent == 0:
                        raise OSError(errno.EPIPE, "file shorter than expected or peer gone")
                    offset += sent
                    sent_total += sent
    except BlockingIOError:
        raise trio.TooSlowError from None  # SO_SNDTIMEO: the peer stopped reading
    finally:
        sock.detach()
        os.set_blocking(sockfd, False)
    return sent_total


async def serve_http(
    config: Config,
    lookup: ObjectLookup,
    image_store: ImageSource,
    *,
    heads: Callable[[], Sequence[str]],
    report_status: ReportStatus | None = None,
    loader_dir: Path = DEFAULT_LOADER_DIR,
    bulk_threads: int = 0,
    send_stall_timeout: float = SEND_STALL_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started(HttpServer)`` once bound (port 0 -> real port).

    ``send_stall_timeout``: seconds a client may leave its receive window closed before
    its connection is cut (counted); ``idle_timeout``: seconds a connection may take to send
    its next request (head and body), then it is cut (counted). ``config.http.sendfile_workers`` > 0 sends bulk
    bodies from that many worker processes (cwboot.services.sendfile_worker).
    """
    engine = _Engine(
        config, lookup, image_store, heads, report_status, loader_dir, send_stall_timeout, idle_timeout
    )
    raise_fd_limit()  # one socket per keep-alive connection: a storm is thousands
    if bulk_threads:
        engine.bulk_threads = trio.CapacityLimiter(bulk_threads)
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.setblocking(False)
    listener.bind((config.http.listen, config.http.port))
    listener.listen(4096)
    address, port = listener.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.sweep_idle)
        if report_status is not None:
            nursery.start_soon(engine.report_loop)
        if config.http.sendfile_workers > 0:
            engine.sendfile_workers = SendfileWorkers(config.http.sendfile_workers, engine.stats.drops)
            await nursery.start(engine.sendfile_workers.run)
        task_status.started(HttpServer(address, port, engine.stats, engine.sendfile_workers))
        with listener:
            while True:
                await trio.lowlevel.wait_readable(listener)
                # Take every pending connection in one pass: in a storm a thousand nodes
                # connect at once, and one accept per scheduler pass left them queued
                # behind every other task (script-phase p95 of seconds).
                for _ in range(ACCEPT_BATCH):
                    try:
                        raw, _ = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:  # EMFILE and friends: back off instead of spinning
                        engine.stats.drops[
                            f"accept failed: {errno.errorcode.get(exc.errno or 0, 'error')}"
                        ] += 1
                        await trio.sleep(0.1)
                        break
                    raw.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                    engine.stats.connections += 1
                    nursery.start_soon(_Connection(engine, raw).run)
