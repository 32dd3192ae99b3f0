"""A small HTTP/1.1 client for thousands of simulated nodes in one trio process.

Cheap by construction: one keep-alive connection per node, responses read
with non-blocking ``recv_into`` into one buffer shared by every connection,
and the body handed to a callback synchronously (nothing awaits between the
read and the callback, so one buffer is enough for the whole process). Small
bodies (scripts, manifests) are collected; large ones (kernels, rootfs
chunks) only go through the callback (hashing, counting), never kept.

Parsers of response bytes are ``*_untrusted`` and raise only HttpError.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

MAX_HEAD_BYTES = 64 * 1024
MAX_COLLECTED_BODY = 64 * 1024 * 1024
_SHARED = bytearray(1024 * 1024)
_VIEW = memoryview(_SHARED)

SocketFactory = Callable[[int, int], socket.socket]


class HttpError(Exception):
    """The peer broke HTTP/1.1 (or the connection): the request may be retried on a new one."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    # Collected body when no callback was given.
    body: bytes = b""
    body_bytes: int = 0


@dataclass
class ConnStats:
    connects: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def parse_response_head_untrusted(head: bytes) -> tuple[int, dict[str, str]]:
    """``HTTP/1.1 200 OK\\r\\nName: value...`` -> (status, lower-cased headers)."""
    try:
        text = head.decode("latin-1")
        status_line, *lines = text.split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise HttpError(f"bad status line {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(f"bad header line {line[:60]!r}")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return int(code), headers
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(f"bad response head: {exc}") from None


def content_length_untrusted(headers: dict[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 15:
        raise HttpError(f"bad content-length {raw[:20]!r}")
    return int(raw)


class HttpConnection:
    """Keep-alive connection to one server from one source address; reconnects when closed."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source: str = "",
        make_socket: SocketFactory | None = None,
        stats: ConnStats | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.source = source
        self._make_socket = make_socket or socket.socket
        self._sock: socket.socket | None = None
        # Bytes read past the previous response (pipelining never happens; kept for safety).
        self._pending = bytearray()
        self._reads_without_wait = 0
        self.stats = stats if stats is not None else ConnStats()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()

    async def _connect(self) -> socket.socket:
        raw = self._make_socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source:
                raw.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
                raw.bind((self.source, 0))
            wrapped = trio.socket.from_stdlib_socket(raw)
            await wrapped.connect((self.host, self.port))
        except BaseException:
            raw.close()
            raise
        self.stats.connects += 1
        self._sock = raw
        return raw

    async def _send_all(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[n:]
        self.stats.bytes_sent += len(data)

    async def _recv(self, sock: socket.socket) -> int:
        """Read into the shared buffer; the caller must use it before its next await.

        A connection that always has data would never let other nodes run, so
        every few reads without a wait yield to the scheduler first.
        """
        self._reads_without_wait += 1
        if self._reads_without_wait >= 4:
            self._reads_without_wait = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                n = sock.recv_into(_SHARED)
            except BlockingIOError:
                self._reads_without_wait = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            if n == 0:
                raise HttpError("connection closed by the server")
            self.stats.bytes_received += n
            return n

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        on_data: Callable[[memoryview], None] | None = None,
    ) -> Response:
        """One request on the kept-alive connection; the body goes to ``on_data`` or is collected."""
        try:
            return await self._request(method, path, body, headers or {}, on_data)
        except BaseException as exc:
            # Whatever stopped us (peer, callback, cancellation) left the connection mid-response.
            self.close()
            key = type(exc).__name__
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
            if isinstance(exc, OSError):
                raise HttpError(f"{method} {path}: {exc}") from None
            raise

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        on_data: Callable[[memoryview], None] | None,
    ) -> Response:
        sock = self._sock or await self._connect()
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "User-Agent: cwboot-sim",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        await self._send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.stats.requests += 1
        head, rest = await self._read_head(sock)
        status, resp_headers = parse_response_head_untrusted(head)
        response = Response(status, resp_headers)
        collected = bytearray()
        if not 200 <= status < 300:
            on_data = None  # an error page is not the resource: collect it instead

        def deliver(view: memoryview) -> None:
            response.body_bytes += len(view)
            if on_data is None:
                if len(collected) + len(view) > MAX_COLLECTED_BODY:
                    raise HttpError("body too large to collect")
                collected.extend(view)
            else:
                on_data(view)

        length = content_length_untrusted(resp_headers)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            length = 0
        if resp_headers.get("transfer-encoding", "").lower() == "chunked":
            await self._read_chunked(sock, rest, deliver)
        elif length is None:
            raise HttpError("response without content-length (close-delimited bodies unsupported)")
        else:
            # ``rest`` may point into the shared buffer: used up before the next await.
            take = min(length, len(rest))
            if take:
                deliver(rest[:take])
            self._pending += rest[take:]
            remaining = length - take
            while remaining:
                n = await self._recv(sock)
                take = min(n, remaining)
                deliver(_VIEW[:take])
                if take < n:
                    self._pending += _VIEW[take:n]
                remaining -= take
        if on_data is None:
            response.body = bytes(collected)
        if resp_headers.get("connection", "").lower() == "close":
            self.close()
        return response

    async def _read_head(self, sock: socket.socket) -> tuple[bytes, memoryview]:
        """The response head, and the bytes after it (a view that is valid until the next await).

        Body bytes that arrive with the head are not copied: the terminator is
        looked for in the shared buffer itself (a head split across reads is
        the rare case that gets copied).
        """
        head = self._pending
        self._pending = bytearray()
        while True:
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(head[:end]), memoryview(bytes(head[end + 4 :]))
            if len(head) > MAX_HEAD_BYTES:
                raise HttpError("response head too large")
            n = await self._recv(sock)
            if not head:
                end = _SHARED.find(b"\r\n\r\n", 0, n)
                if end >= 0:
                    return bytes(_VIEW[:end]), _VIEW[end + 4 : n]
            head += _VIEW[:n]

    async def _read_chunked(
        self, sock: socket.socket, rest: memoryview, deliver: Callable[[memoryview], None]
    ) -> None:
        """RFC 9112 7.1, small bodies only (scripts): buffer it all, then decode."""
        data = bytearray(rest)
        while True:
            pos = 0
            out = bytearray()
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_text = bytes(data[pos:eol]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    # Last chunk: optional trailers, then an empty line.
                    terminator = data.find(b"\r\n\r\n", eol)
                    if terminator < 0:
                        break
                    done = terminator + 4
                    if out:
                        deliver(memoryview(bytes(out)))
                    self._pending += data[done:]
                    return
                if len(data) < eol + 2 + size + 2:
                    break
                out += data[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
            if len(data) > MAX_COLLECTED_BODY:
                raise HttpError("chunked body too large")
            n = await self._recv(sock)
            data += _VIEW[:n]
