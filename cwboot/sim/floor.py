"""The bandwidth floor: how fast bare ``os.sendfile`` moves the image over the same link, same run.

A storm cannot finish faster than (bytes it must move) / (what the link and
the receiving side can carry). ``serve_file`` is the barest server that can
speak to our client: a thread per connection that reads a request head and
answers with a fixed header plus ``os.sendfile`` of one file (the image
stream), nothing else. ``measure`` fetches it from ``connections`` parallel
keep-alive connections with the very client code the simulated nodes use
(``HttpConnection`` + ``StreamVerifier``: every chunk hashed and checked), so
client-side cost is in the floor too and the ratio isolates the server.

Run the server as its own process (``python -m cwboot.sim.floor FILE ADDRESS``;
it prints its port) so it has a core and a GIL of its own, like the head.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import dataclass, field

import trio

from cwboot.protocol.manifest import Manifest
from cwboot.sim.http_client import HttpConnection, SocketFactory
from cwboot.sim.rootfs import FrameDigests, StreamVerifier


@dataclass
class FloorResult:
    bytes: int
    seconds: float
    connections: int
    samples: list[float] = field(default_factory=list)  # bytes/s of every sample taken (storm)

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def _serve_connection(conn: socket.socket, fd: int, size: int) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/zstd\r\n\r\n".encode()
    pending = b""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                conn.sendall(head, socket.MSG_MORE)
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), fd, offset, size - offset)


def serve_file(path: str, address: str, port: int = 0) -> None:
    """Serve ``path`` to every request on every connection until killed; prints the bound port."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(1024)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn, fd, size), daemon=True).start()


async def measure(
    host: str,
    port: int,
    m: Manifest,
    digests: FrameDigests,
    *,
    connections: int = 32,
    total_bytes: int = 1 << 31,
    sources: list[str] | None = None,
    make_socket: SocketFactory = socket.socket,
) -> FloorResult:
    """Fetch the stream over ``connections`` connections until ``total_bytes`` moved; verified like a node."""
    per_fetch = m.compressed_size
    fetches = max(connections, -(-total_bytes // per_fetch))
    moved = 0
    queue = iter(range(fetches))

    async def worker(i: int) -> None:
        nonlocal moved
        source = sources[i % len(sources)] if sources else ""
        conn = HttpConnection(host, port, source=source, make_socket=make_socket)
        try:
            for _ in queue:
                verifier = StreamVerifier(m.chunks, digests)
                response = await conn.request("GET", "/stream", on_data=verifier.feed)
                if response.status != 200 or not verifier.done:
                    raise RuntimeError(
                        f"floor fetch: HTTP {response.status}, complete={verifier.done}"
                    )
                moved += response.body_bytes
        finally:
            conn.close()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(worker, i)
    return FloorResult(moved, trio.current_time() - start, connections)


if __name__ == "__main__":
    serve_file(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
