"""mount_rootfs end to end: a real Debian kernel + cwboot's initramfs in QEMU, fetching its
root filesystem from cwboot HTTP engines on 127.0.0.1 (QEMU's user network reaches them
as 10.0.2.2).

Fail-over and verification: the node is handed four heads: a dead one, a busy one
(max_streams=0: every chunk gets 503 + Retry-After), one whose copy of a chunk is corrupt
(same size, bytes flipped: only the xxh3 check can catch it), and a good one. It must fail
over, wait out the 503, reject the bad chunk, refetch it from the good head, mount the
overlay and run the image's /sbin/init, which prints a marker and powers off.

Resume: the node is handed two heads, both a relay (``CuttingHead``) in front of one cwboot
engine, which closes the connection partway through the first GET of one chunk. The relay's
own log must show the cut, then the same chunk asked again with ``Range: bytes=N-`` (busybox
``wget -c`` resumes from the partial file; mount_rootfs moves to the next head on any
failure, so the resume goes to the second head) and answered 206 with only the missing
bytes; the node reports ``up``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cwboot.config import Config
from cwboot.control.images import ImageStore
from cwboot.control.initramfs import build_initramfs, fetch_debian_kernel
from cwboot.services.http import serve_http
from tests.vm.harness import DEFAULT_CACHE, build_rootfs, fetch_kernel

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MAC = "52:54:00:12:34:58"  # 0x58 % 4 == 0: mount_rootfs starts with the first head
RESUME_MAC = "52:54:00:12:34:5a"  # 0x5a % 2 == 0: starts with the first of two heads
Report = tuple[str, dict[str, str]]


class NoObjects:
    def node_by_mac(self, mac: str) -> dict[str, Any] | None:
        return None

    def get(self, kind: str, ref: str) -> dict[str, Any] | None:
        return None


def tiny_rootfs(root: Path) -> Path:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    init = root / "sbin" / "init"
    init.write_text(
        "#!/bin/busybox sh\n"
        "echo \"ROOTFS-OK $(/bin/busybox cat /etc/marker) root=$(/bin/busybox grep ' / ' /proc/mounts"
        " | /bin/busybox cut -d ' ' -f 3 | /bin/busybox tail -n 1)\"\n"
        "/bin/busybox poweroff -f\n"
    )
    init.chmod(0o755)
    (root / "etc" / "marker").write_text("hello-from-cwboot\n")
    (root / "etc" / "payload").write_bytes(os.urandom(3 << 20))
    return root


async def start_engine(
    nursery: trio.Nursery, store: ImageStore, reports: list[Report], max_streams: int = 256
) -> int:
    """A cwboot HTTP engine on 127.0.0.1 serving ``store``; returns its port."""

    async def report(mac: str, fields: dict[str, str]) -> None:
        reports.append((mac, fields))

    config = Config()
    config.http.listen, config.http.port = "127.0.0.1", 0
    config.http.max_streams = max_streams
    srv = await nursery.start(
        lambda task_status: serve_http(
            config, NoObjects(), store, heads=list, report_status=report, task_status=task_status
        )
    )
    return int(srv.port)


@contextmanager
def serving(start: Callable[[trio.Nursery], Awaitable[list[int]]]) -> Iterator[list[int]]:
    """Run ``start``'s servers in a trio thread for the duration of the block; yields their ports."""
    started: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                ports = await start(nursery)
                started.put((ports, scope, trio.lowlevel.current_trio_token()))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # handed to the test's thread, raised there
            started.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    item = started.get(timeout=10)
    if isinstance(item, BaseException):
        raise item
    ports, scope, token = item
    try:
        yield ports
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)
    if not started.empty():  # a server died while the VM ran
        raise started.get()


def boot(vmlinuz: Path, initrd: Path, cmdline: str, mac: str, log: Path, memory_mib: int) -> str:
    """Boot the kernel + initramfs under TCG until the guest powers off; returns the console."""
    with open(log, "w") as out:
        vm = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mib), "-nographic", "-no-reboot",
             "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", cmdline,
             "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            vm.wait(timeout=240)
        except subprocess.TimeoutExpired:
            vm.kill()
            vm.wait()
            raise AssertionError("VM did not power off:\n" + log.read_text()[-3000:]) from None
    return log.read_text()


def test_overlay_boot_fails_over_and_rejects_a_corrupt_chunk(tmp_path: Path) -> None:
    kernel = fetch_debian_kernel(DEFAULT_CACHE / "generic-kernel")  # cached across runs, like tests/vm
    initrd = tmp_path / "initramfs.gz"
    build_initramfs(initrd, kernel_modules=kernel.modules_dir)
    tree = tiny_rootfs(tmp_path / "tree")
    good = ImageStore(tmp_path / "good", chunk_size=256 * 1024)
    bad = ImageStore(tmp_path / "bad", chunk_size=256 * 1024)
    m = good.import_tree("tiny", tree)
    bad.import_tree("tiny", tree)
    victim = bad.chunk_file(m.chunks[0].id)
    frame = bytearray(victim.read_bytes())
    frame[len(frame) // 2] ^= 0xFF
    victim.write_bytes(bytes(frame))

    reports: list[Report] = []

    async def start(nursery: trio.Nursery) -> list[int]:
        return [
            await start_engine(nursery, store, reports, max_streams)
            for store, max_streams in ((good, 0), (bad, 256), (good, 256))
        ]

    with serving(start) as ports:
        heads = ",".join(["http://10.0.2.2:1"] + [f"http://10.0.2.2:{p}" for p in ports])
        cmdline = (
            f"console=ttyS0 quiet cwboot.heads={heads} cwboot.image=tiny cwboot.version=1 "
            f"cwboot.style=overlay cwboot.mac={MAC.replace(':', '-')} cwboot.fetch_timeout=10"
        )
        console = boot(kernel.vmlinuz, initrd, cmdline, MAC, tmp_path / "console.log", 768)
    assert "ROOTFS-OK hello-from-cwboot root=overlay" in console, console[-3000:]
    assert "fetch http://10.0.2.2:1/" in console  # the dead head was tried and left
    assert f"http://10.0.2.2:{ports[0]} is busy (503): retrying in" in console
    assert f"chunk {m.chunks[0].id} failed verification" in console
    stages = [f["stage"] for mac, f in reports if mac == MAC]
    assert stages[0] == "initramfs" and stages[-1] == "switch_root"
    assert "chunk_invalid" in stages and "failed" not in stages


@dataclasses.dataclass
class Exchange:
    """One request through the relay, as the relay saw it."""

    head: int  # which of the relay's ports (the node's heads) was asked
    method: str
    path: str
    range: str | None  # the request's Range header
    status: int = 0  # the engine's status code, relayed
    body_bytes: int = 0  # response body bytes relayed to the node
    cut: bool = False


class CuttingHead:
    """An HTTP relay in front of one cwboot engine, one listening port per head.

    Every request and its response are relayed byte for byte (busybox wget sends
    ``Connection: close``: one request per connection), except the first GET of ``victim``,
    whose connection it closes after ``cut_after`` bytes of the response body.
    """

    MAX_HEADER = 64 * 1024

    def __init__(self, upstream_port: int, victim: str, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.victim = victim
        self.cut_after = cut_after
        self.log: list[Exchange] = []
        self._cut_done = False

    async def start(self, nursery: trio.Nursery, heads: int) -> list[int]:
        ports = []
        for head in range(heads):
            handler = functools.partial(self._relay, head=head)
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            ports.append(listeners[0].socket.getsockname()[1])
        return ports

    async def _relay(self, client: trio.SocketStream, head: int) -> None:
        async with client:
            with trio.move_on_after(60):  # nothing here outlives a stuck peer
                request = b""
                while b"\r\n\r\n" not in request:
                    data = await client.receive_some(65536)
                    if not data or len(request) > self.MAX_HEADER:
                        return
                    request += data
                lines = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
                }
                ex = Exchange(head, method, path, headers.get("range"))
                self.log.append(ex)
                cut = method == "GET" and path == self.victim and not self._cut_done
                self._cut_done |= cut
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                async with upstream, trio.open_nursery() as nursery:
                    await upstream.send_all(request)
                    nursery.start_soon(self._pump, client, upstream)  # the rest of a POST body
                    await self._respond(upstream, client, ex, cut)
                    nursery.cancel_scope.cancel()

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        while data := await src.receive_some(65536):
            await dst.send_all(data)

    async def _respond(
        self, upstream: trio.SocketStream, client: trio.SocketStream, ex: Exchange, cut: bool
    ) -> None:
        response = b""
        while data := await upstream.receive_some(65536):
            if not ex.status:  # still in the response head
                response += data
                if b"\r\n\r\n" not in response:
                    continue
                status_line_and_headers, _, data = response.partition(b"\r\n\r\n")
                ex.status = int(status_line_and_headers.split(b" ", 2)[1])
                await client.send_all(status_line_and_headers + b"\r\n\r\n")
            if cut and ex.body_bytes + len(data) >= self.cut_after:
                await client.send_all(data[: self.cut_after - ex.body_bytes])
                ex.body_bytes, ex.cut = self.cut_after, True
                return  # the caller closes the node's connection here: the cut
            await client.send_all(data)
            ex.body_bytes += len(data)


def test_a_chunk_cut_partway_is_resumed_with_a_range_request(tmp_path: Path) -> None:
    kernel = fetch_kernel()  # the cloud kernel tests/vm cache: boots fastest under TCG
    initrd = tmp_path / "initramfs.gz"
    build_initramfs(
        initrd, kernel_modules=kernel.modules, modules=("virtio_pci", "virtio_net", "overlay")
    )
    tree = build_rootfs(tmp_path / "tree")  # its /sbin/init POSTs stage=up to the heads
    (tree / "etc" / "payload").write_bytes(os.urandom(1 << 20))  # incompressible chunks
    store = ImageStore(tmp_path / "store", chunk_size=256 * 1024)
    m = store.import_tree("tiny", tree)
    victim = max(m.chunks, key=lambda c: c.compressed_size)
    assert [c.id for c in m.chunks].count(victim.id) == 1
    cut_after = victim.compressed_size // 2  # well past the first TCP segments
    victim_path = f"/chunks/{victim.id}"
    reports: list[Report] = []
    relay: list[CuttingHead] = []

    async def start(nursery: trio.Nursery) -> list[int]:
        relay.append(CuttingHead(await start_engine(nursery, store, reports), victim_path, cut_after))
        return await relay[0].start(nursery, heads=2)

    with serving(start) as ports:
        heads = ",".join(f"http://10.0.2.2:{p}" for p in ports)
        cmdline = (
            f"console=ttyS0 panic=-1 no_timer_check cwboot.heads={heads} cwboot.image=tiny "
            f"cwboot.version=1 cwboot.mac={RESUME_MAC.replace(':', '-')} cwboot.fetch_timeout=30"
        )
        console = boot(kernel.vmlinuz, initrd, cmdline, RESUME_MAC, tmp_path / "console.log", 256)
    log = relay[0].log
    tail = console[-3000:]
    # (1) the first GET of the chunk was cut partway, and the node saw it fail.
    first, *again = [ex for ex in log if ex.path == victim_path]
    assert (first.head, first.range, first.status) == (0, None, 200), log
    assert first.cut and first.body_bytes == cut_after < victim.compressed_size, log
    cut_seen = f"fetch http://10.0.2.2:{ports[0]}{victim_path} failed (connection closed prematurely)"
    assert cut_seen in console, tail
    # (2) one more GET of that chunk only, to the next head, from where the cut left off.
    assert len(again) == 1, log
    assert (again[0].head, again[0].range, again[0].status) == (1, f"bytes={cut_after}-", 206), log
    assert again[0].body_bytes == victim.compressed_size - cut_after and not again[0].cut, log
    # (3) every other chunk once, whole; all verified (no chunk_invalid), unpacked, root up.
    chunk_gets = [ex for ex in log if ex.path.startswith("/chunks/") and ex is not again[0]]
    assert sorted(ex.path for ex in chunk_gets) == sorted(f"/chunks/{c.id}" for c in m.chunks)
    assert all(ex.status == 200 and ex.range is None for ex in chunk_gets), log
    assert f"cwboot: unpacked {len(m.chunks)} chunks" in console, tail
    assert "failed verification" not in console, tail
    assert f"cwtest-rootfs: real root (tmpfs) is up on {RESUME_MAC.replace(':', '-')}" in console, tail
    stages = [f["stage"] for mac, f in reports if mac == RESUME_MAC]
    assert stages[0] == "initramfs" and stages[-1] == "up", stages
    assert "chunk_invalid" not in stages and "failed" not in stages, stages
