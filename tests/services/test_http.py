"""The HTTP boot engine against real clients (curl, busybox wget, zstd, busybox tar) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from cwboot.config import Config
from cwboot.control.images import ImageStore
from cwboot.services.http import HttpServer, serve_http

ROOT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:aa:bb:01"
CHUNK = 64 * 1024
STALL = 3.0  # the engine's send stall timeout in these tests (60 s in service)
IDLE = 2.0  # the engine's idle timeout (head or body) in these tests (30 s in service)


class Lookup:
    """The two ObjectCache reads the engine makes, over plain dicts."""

    def __init__(self) -> None:
        self.nodes = {MAC: {"name": "n1", "boot_config": "bc"}}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def node_by_mac(self, mac: str) -> dict[str, Any] | None:
        return self.nodes.get(mac)

    def get(self, kind: str, ref: str) -> dict[str, Any] | None:
        return self.objects.get((kind, ref))


@dataclass
class Server:
    url: str
    port: int
    http: HttpServer
    store: ImageStore
    lookup: Lookup
    tree: Path
    kernel: Path
    reports: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("n1\n")
    (root / "data").mkdir()
    for i in range(6):
        (root / "data" / f"f{i}").write_bytes(os.urandom(50_000) + b"z" * 50_000)
    return root


# (bulk_threads, http.sendfile_workers): bodies from the trio loop, from worker threads, from worker processes
@pytest.fixture(params=[(0, 0), (4, 0), (0, 2)], ids=["trio-sendfile", "thread-sendfile", "worker-sendfile"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    bulk_threads, sendfile_workers = request.param
    store = ImageStore(tmp_path / "images", chunk_size=CHUNK)
    tree = make_tree(tmp_path / "tree")
    store.import_tree("img", tree)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(300_000))
    kref = store.store_file(kernel, alias="vmlinuz")
    iref = store.store_file(kernel, alias="initrd")
    lookup = Lookup()
    lookup.objects[("boot_config", "bc")] = {
        "name": "bc", "kernel": kref.alias, "initramfs": iref.id, "cmdline": "console=ttyS0",
        "image": "img", "image_version": "", "boot_style": "rwram",
    }  # fmt: skip
    config = Config()
    config.http.listen = "127.0.0.1"
    config.http.port = 0
    config.http.max_streams = 4
    config.http.max_wait = 0.5  # short queueing so the 503 path is reached quickly
    config.http.sendfile_workers = sendfile_workers
    loaders = tmp_path / "loaders"
    loaders.mkdir()
    (loaders / "ipxe.efi").write_bytes(b"MZ" + os.urandom(1000))
    started: queue.Queue[Any] = queue.Queue()
    reports: list[tuple[str, dict[str, str]]] = []

    async def report(mac: str, fields: dict[str, str]) -> None:
        reports.append((mac, fields))

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                http = await nursery.start(
                    lambda task_status: serve_http(
                        config,
                        lookup,
                        store,
                        heads=lambda: ["http://127.0.0.1:1", "http://127.0.0.2:2"],
                        report_status=report,
                        loader_dir=loaders,
                        bulk_threads=bulk_threads,
                        send_stall_timeout=STALL,
                        idle_timeout=IDLE,
                        task_status=task_status,
                    )  # fmt: skip
                )
                started.put((http, scope, trio.lowlevel.current_trio_token()))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    http, scope, token = started.get(timeout=10)
    srv = Server(
        f"http://127.0.0.1:{http.port}", http.port, http, store, lookup, tree, kernel, reports
    )
    try:
        yield srv
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)
        assert not thread.is_alive()


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, check=check
    )


def status_of(*args: str) -> int:
    return int(curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout)


def test_ipxe_script_with_curl_and_busybox_wget(server: Server) -> None:
    url = f"{server.url}/boot/ipxe/52-54-00-aa-bb-01"
    text = curl(url).stdout.decode()
    assert text.startswith("#!ipxe\n")
    assert "http://127.0.0.2:2/boot/kernel/vmlinuz initrd=initramfs console=ttyS0" in text
    assert (
        "cwboot.image=img cwboot.version=1 cwboot.style=rwram cwboot.mac=52-54-00-aa-bb-01" in text
    )
    wget = subprocess.run(
        ["busybox", "wget", "-q", "-O", "-", url], capture_output=True, check=True, timeout=20
    )
    assert wget.stdout.decode() == text
    assert status_of(f"{server.url}/boot/ipxe/52-54-00-aa-bb-99") == 404
    assert status_of(f"{server.url}/boot/ipxe/not-a-mac") == 404


def script(server: Server) -> str:
    return curl(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01").stdout.decode()


def test_script_follows_the_store_pins_and_refuses_injection(server: Server) -> None:
    server.store.import_tree("img", server.tree, version="2")
    # a stale mirror (the head synced the object before "2" existed) is not what is served
    server.lookup.objects[("image", "img")] = {"name": "img", "latest": "1"}
    assert "cwboot.version=2" in script(server)
    server.lookup.objects[("boot_config", "bc")]["image_version"] = "1"
    assert "cwboot.version=1" in script(server)
    server.lookup.objects[("boot_config", "bc")]["cmdline"] = "quiet || shell"
    assert status_of(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01") == 500
    assert server.http.stats.drops["unsafe boot config"] == 1
    server.lookup.objects[("boot_config", "bc")]["kernel"] = ""
    assert script(server).endswith("exit\n")


def test_a_missing_image_version_is_refused_not_rendered(server: Server) -> None:
    """A script naming a version this head cannot serve would send the node into a 404 loop."""
    bc = server.lookup.objects[("boot_config", "bc")]
    bc["image_version"] = "9"
    r = curl("-i", f"{server.url}/boot/ipxe/52-54-00-aa-bb-01").stdout.decode()
    assert r.startswith("HTTP/1.1 503") and "image img has no version 9 on this head" in r
    assert "#!ipxe" not in r
    assert server.http.stats.drops["pinned image version not published"] == 1
    bc["image_version"], bc["image"] = "", "nothing"
    r = curl("-i", f"{server.url}/boot/ipxe/52-54-00-aa-bb-01").stdout.decode()
    assert r.startswith("HTTP/1.1 503") and "image nothing has no published version" in r
    assert server.http.stats.drops["image not published"] == 1
    server.store.remove_version("img", "1")  # the last version of an image goes
    bc["image"] = "img"
    assert status_of(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01") == 503
    assert server.http.stats.drops["image not published"] == 2


def cwboot_cli(server: Server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on this head's store, with no API answering (http://127.0.0.1:9)."""
    cmd = [sys.executable, "-m", "cwboot", *args, "--set", f"images.store_dir={server.store.root}",
           "--set", f"images.chunk_size={CHUNK}", "--set", f"head.state_dir={tmp_path / 'state'}",
           "--url", "http://127.0.0.1:9", "--token", "t"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWBOOT_")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r


def test_cli_import_and_rollback_are_served_while_the_api_is_down(
    server: Server, tmp_path: Path
) -> None:
    """import v2, roll back to v1 with the CLI (API unreachable): the next script names v1."""
    server.lookup.objects[("image", "img")] = {"name": "img", "latest": "1"}  # synced at start
    (server.tree / "etc" / "motd").write_text("version two\n")
    r = cwboot_cli(server, tmp_path, "images", "import", "img", str(server.tree))
    assert "img version 2:" in r.stdout and "image object not updated" in r.stderr
    assert "cwboot.version=2" in script(server)
    r = cwboot_cli(server, tmp_path, "images", "rollback", "img")
    assert "latest is now version 1" in r.stdout and "image object not updated" in r.stderr
    server.lookup.objects[("image", "img")]["latest"] = "2"  # the mirror a head synced in between
    text = script(server)
    assert "cwboot.image=img cwboot.version=1 " in text
    m1 = server.store.resolve("img", "1")
    assert m1 is not None
    assert curl(f"{server.url}/images/img/latest/manifest").stdout == m1.to_json()
    cwboot_cli(server, tmp_path, "images", "rollback", "img", "2")
    assert "cwboot.version=2" in script(server)


def test_kernel_initramfs_loader_head_etag_and_errors(server: Server, tmp_path: Path) -> None:
    kid = server.store.store_file(server.kernel).id
    for path in ("/boot/kernel/vmlinuz", f"/boot/kernel/{kid}", "/boot/initramfs/initrd"):
        assert curl(server.url + path).stdout == server.kernel.read_bytes()
    busybox = subprocess.run(
        ["busybox", "wget", "-q", "-O", "-", server.url + "/boot/kernel/vmlinuz"],
        capture_output=True,
        timeout=20,
    )
    assert busybox.stdout == server.kernel.read_bytes()
    head = curl("-I", server.url + "/boot/kernel/vmlinuz").stdout.decode().lower()
    assert (
        "content-length: 300000" in head
        and f'etag: "{kid}"' in head
        and "accept-ranges: bytes" in head
    )
    assert status_of("-H", f'If-None-Match: "{kid}"', server.url + "/boot/kernel/vmlinuz") == 304
    assert status_of("-r", "300000-", server.url + "/boot/kernel/vmlinuz") == 416
    assert status_of(server.url + "/boot/kernel/nope") == 404
    assert status_of(server.url + "/boot/kernel/..%2F..%2Fetc%2Fpasswd") == 404
    assert status_of(server.url + "/boot/loader/..") == 404
    assert curl(server.url + "/boot/loader/ipxe.efi").stdout[:2] == b"MZ"
    assert status_of("-X", "DELETE", server.url + "/boot/kernel/vmlinuz") == 405
    assert status_of(server.url + "/nothing/here") == 404


def test_stream_decodes_with_zstd_and_tar(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pipeline = (
        f"curl -sSf {server.url}/images/img/latest/stream | zstd -dc | busybox tar -x -C {out}"
    )
    subprocess.run(["bash", "-euo", "pipefail", "-c", pipeline], check=True, timeout=30)
    for p in server.tree.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(server.tree)).read_bytes() == p.read_bytes()
    m = server.store.resolve("img")
    assert m is not None
    manifest = json.loads(curl(f"{server.url}/images/img/1/manifest").stdout)
    assert manifest["chunks"][0][0] == m.chunks[0].id
    text = curl(f"{server.url}/images/img/1/manifest.txt").stdout.decode().splitlines()
    assert text[-1] == f"{m.chunks[-1].id} {m.chunks[-1].raw_size} {m.chunks[-1].compressed_size}"
    chunk = curl(f"{server.url}/chunks/{m.chunks[1].id}").stdout
    assert chunk == server.store.chunk_file(m.chunks[1].id).read_bytes()
    assert status_of(f"{server.url}/images/img/9/stream") == 404
    assert status_of(f"{server.url}/chunks/{'0' * 32}") == 404


def test_resumed_range_downloads_equal_the_full_one(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/images/img/1/stream"
    full = curl(url).stdout
    m = server.store.resolve("img")
    assert m is not None and len(full) == m.compressed_size
    part = tmp_path / "part"
    cut = m.compressed_offsets[2] + 1234  # inside the third frame
    part.write_bytes(curl("-r", f"0-{cut - 1}", url).stdout)
    assert status_of("-r", f"0-{cut - 1}", url) == 206
    curl("-C", "-", "-o", str(part), url)
    assert part.read_bytes() == full
    # busybox wget -c, the way mount_rootfs resumes a chunk
    part.write_bytes(full[:777])
    subprocess.run(["busybox", "wget", "-q", "-c", "-O", str(part), url], check=True, timeout=20)
    assert part.read_bytes() == full
    assert curl("-r", "-100", url).stdout == full[-100:]
    head = curl("-I", url).stdout.decode().lower()
    assert f"content-length: {len(full)}" in head and "etag:" in head
    etag = next(
        line.split(": ", 1)[1].strip() for line in head.splitlines() if line.startswith("etag")
    )
    assert status_of("-H", f"If-None-Match: {etag}", url) == 304
    assert status_of("-H", 'If-Range: "stale"', "-r", "0-9", url) == 200


def test_keep_alive_reuses_one_connection(server: Server) -> None:
    before = server.http.stats.connections
    r = curl("-v", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
             f"{server.url}/boot/kernel/vmlinuz", f"{server.url}/images/img/1/manifest",
             f"{server.url}/images/img/1/stream")  # fmt: skip
    assert b"Re-using existing connection" in r.stderr or b"Reusing existing connection" in r.stderr
    assert server.http.stats.connections == before + 1


def test_max_streams_answers_503_with_retry_after(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "random").write_bytes(os.urandom(32 << 20))  # more than loopback socket buffers hold
    server.store.import_tree("big", big)
    socks = []
    m = server.store.resolve("img")
    assert m is not None
    try:
        for _ in range(4):  # four readers that never read hold every stream slot
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /images/big/1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        deadline = time.monotonic() + 10
        while server.http.stats.active_streams < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = curl("-D", "-", "-o", "/dev/null", f"{server.url}/chunks/{m.chunks[0].id}")
        assert b" 503 " in r.stdout and b"retry-after: 2" in r.stdout.lower()
        assert server.http.stats.drops["admission wait expired (503)"] >= 1
        assert (
            status_of(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01") == 200
        )  # scripts are not streams
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while server.http.stats.active_streams:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status_of(f"{server.url}/chunks/{m.chunks[0].id}") == 200


def test_a_request_over_the_budget_queues_and_is_served_when_a_slot_frees(
    server: Server, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "random").write_bytes(os.urandom(32 << 20))
    server.store.import_tree("big", big)
    m = server.store.resolve("img")
    assert m is not None
    socks = []
    try:
        for _ in range(4):  # every stream slot held by a reader that never reads
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /images/big/1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        deadline = time.monotonic() + 10
        while server.http.stats.active_streams < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waiting = subprocess.Popen(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/chunks/{m.chunks[0].id}"],
            stdout=subprocess.PIPE,
        )
        time.sleep(0.2)  # queued, inside max_wait (0.5 s)
        socks.pop().close()  # one slot frees: the queued request takes it
        out, _ = waiting.communicate(timeout=10)
        assert out == b"200"
    finally:
        for s in socks:
            s.close()


def test_status_reports_reach_the_callback(server: Server) -> None:
    assert (
        status_of("-d", "stage=fetching&done=3", f"{server.url}/boot/status/52-54-00-aa-bb-01")
        == 204
    )
    assert status_of("-H", "content-type: application/json", "-d", '{"stage": "switch_root"}',
                     f"{server.url}/boot/status/52:54:00:aa:bb:01") == 204  # fmt: skip
    subprocess.run(["busybox", "wget", "-q", "-O", "/dev/null", "--post-data", "stage=initramfs",
                    f"{server.url}/boot/status/52-54-00-aa-bb-01"], check=True, timeout=20)  # fmt: skip
    assert status_of("-d", "Bad-Field=1", f"{server.url}/boot/status/52-54-00-aa-bb-01") == 400
    assert status_of("-d", "x" * 20000, f"{server.url}/boot/status/52-54-00-aa-bb-01") == 413
    deadline = time.monotonic() + 5
    while len(server.reports) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.reports == [
        (MAC, {"stage": "fetching", "done": "3"}),
        (MAC, {"stage": "switch_root"}),
        (MAC, {"stage": "initramfs"}),
    ]


def test_garbage_and_quarantined_chunks(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert server.http.stats.drops["malformed request"] == 1
    m = server.store.resolve("img")
    assert m is not None
    victim = server.store.chunk_file(m.chunks[3].id)
    victim.write_bytes(b"not a zstd frame" + victim.read_bytes()[16:])
    report = server.store.verify()
    assert report.corrupt == [m.chunks[3].id]
    assert status_of(f"{server.url}/chunks/{m.chunks[3].id}") == 404
    cut = curl(f"{server.url}/images/img/1/stream", check=False)
    assert cut.returncode != 0  # the stream stops before the bad chunk rather than send it
    assert len(cut.stdout) == m.compressed_offsets[3]
    assert server.http.stats.drops["chunk missing mid-stream"] == 1
    assert status_of(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01") == 200  # still serving


def read_all(s: socket.socket, limit: float) -> bytes:
    """Everything until the server closes, waiting at most ``limit`` seconds in all."""
    s.settimeout(0.2)
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return out
        out += data
    raise AssertionError(f"still open after {limit} s: {out[:200]!r}")


@pytest.mark.parametrize("server", [(0, 2)], indirect=True, ids=["worker-sendfile"])
def test_idle_slow_and_slowloris_clients_are_cut_and_counted(server: Server) -> None:
    drops = server.http.stats.drops
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        assert read_all(silent, IDLE * 4) == b""
    assert drops["idle keep-alive timeout"] == 1
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"POST /boot/status/52-54-00-aa-bb-01 HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
        assert read_all(slow, IDLE * 4) == b""
    assert drops["slow request body"] == 1
    with socket.create_connection(("127.0.0.1", server.port)) as loris:  # a byte at a time, forever
        loris.settimeout(0.2)
        start = time.monotonic()
        closed = False
        for byte in (b"GET /boot/kernel/vmlinuz HTTP/1.1\r\nX: " + b"a" * 400)[: int(IDLE * 4 / 0.1)]:
            try:
                loris.send(bytes([byte]))
                if loris.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - start < IDLE * 4
    assert drops["idle keep-alive timeout"] == 2
    assert status_of(f"{server.url}/boot/kernel/vmlinuz") == 200  # the engine itself never waited


def test_pipelined_http10_and_chunked_requests(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"HEAD /boot/kernel/vmlinuz HTTP/1.1\r\nHost: h\r\n\r\n"
                  b"GET /images/img/1/manifest HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")  # fmt: skip
        answer = read_all(s, 10)
    first, rest = answer.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200 ") and b"content-length: 300000" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 ") and b"connection: close" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["name"] == "img"
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # 1.0: answered, then closed
        s.sendall(b"GET /boot/kernel/vmlinuz HTTP/1.0\r\n\r\n")
        answer = read_all(s, 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(server.kernel.read_bytes())
    before = len(server.reports)
    r = curl("-H", "Transfer-Encoding: chunked", "-d", "stage=up", "-o", "/dev/null",
             "-w", "%{http_code}", f"{server.url}/boot/status/52-54-00-aa-bb-01")  # fmt: skip
    assert r.stdout == b"204"
    deadline = time.monotonic() + 10
    while len(server.reports) == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert server.reports[-1] == ("52:54:00:aa:bb:01", {"stage": "up"})


def test_a_failing_lookup_costs_one_connection_not_the_engine(server: Server) -> None:
    def broken(mac: str) -> None:
        raise RuntimeError("cache bug")

    server.lookup.node_by_mac = broken  # type: ignore[method-assign]
    r = curl(f"{server.url}/boot/ipxe/52-54-00-aa-bb-01", check=False)
    assert r.returncode != 0
    assert server.http.stats.drops["internal error"] == 1
    assert status_of(f"{server.url}/boot/kernel/vmlinuz") == 200


def big_image(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "random").write_bytes(os.urandom(32 << 20))  # more than loopback socket buffers hold
    server.store.import_tree("big", big)


def reader_that_never_reads(server: Server) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    s.sendall(b"GET /images/big/1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """What the server sent before it closed the connection (a reset counts as closed)."""
    s.settimeout(30)
    got = bytearray()
    try:
        while data := s.recv(1 << 20):
            got += data
    except ConnectionResetError:
        pass
    return bytes(got)


def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(
    server: Server, tmp_path: Path
) -> None:
    big_image(server, tmp_path)
    m = server.store.resolve("big")
    assert m is not None
    with reader_that_never_reads(server) as s:
        deadline = time.monotonic() + 30
        while server.http.stats.drops["send stalled (client stopped reading)"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.http.stats.active_streams == 0  # the slot went back
        assert 0 < len(read_until_closed(s)) < m.compressed_size  # cut, not finished
    assert server.http.stats.bytes_sent < m.compressed_size
    assert status_of(f"{server.url}/chunks/{m.chunks[0].id}") == 200


def test_a_chunk_that_vanishes_mid_stream_cuts_the_stream_there(
    server: Server, tmp_path: Path
) -> None:
    """Removed after the stream started (a worker got its file list then): never other bytes."""
    big_image(server, tmp_path)
    m = server.store.resolve("big")
    assert m is not None and len(m.chunks) > 400
    with reader_that_never_reads(server) as s:
        deadline = time.monotonic() + 10
        while server.http.stats.active_streams < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.store.chunk_file(m.chunks[400].id).unlink()  # far beyond what the buffers hold
        head, _, body = read_until_closed(s).partition(b"\r\n\r\n")
    assert server.http.stats.drops["chunk missing mid-stream"] == 1
    assert head.startswith(b"HTTP/1.1 200 ")
    before = b"".join(server.store.chunk_file(c.id).read_bytes() for c in m.chunks[:400])
    assert body == before  # every byte before the vanished chunk, then the close


@pytest.mark.parametrize("server", [(0, 2)], indirect=True, ids=["worker-sendfile"])
def test_a_sendfile_worker_that_dies_fails_its_bodies_and_is_replaced(
    server: Server, tmp_path: Path
) -> None:
    big_image(server, tmp_path)
    workers = server.http.sendfile_workers
    assert workers is not None
    old = workers.pids()
    assert len(old) == 2
    with reader_that_never_reads(server) as s:
        deadline = time.monotonic() + 10
        while server.http.stats.active_streams < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for pid in old:  # whichever holds the job
            os.kill(pid, 9)
        assert read_until_closed(s).startswith(b"HTTP/1.1 200 ")  # part of the body, then the close
    deadline = time.monotonic() + 30
    while server.http.stats.active_streams or len(workers.pids()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.http.stats.drops["sendfile worker died"] == 1
    assert not set(workers.pids()) & set(old)
    kernel = curl(f"{server.url}/boot/kernel/vmlinuz").stdout  # served by a replacement
    assert kernel == server.kernel.read_bytes()


ENGINE_IN_A_CHILD = """
import sys, trio
from pathlib import Path
from cwboot.config import Config
from cwboot.control.images import ImageStore
from cwboot.services.http import serve_http

class NoObjects:
    def node_by_mac(self, mac): return None
    def get(self, kind, ref): return None

async def main():
    config = Config()
    config.http.listen, config.http.port, config.http.sendfile_workers = "127.0.0.1", 0, 2
    async with trio.open_nursery() as nursery:
        http = await nursery.start(lambda task_status: serve_http(
            config, NoObjects(), ImageStore(Path(sys.argv[1])), heads=lambda: [], task_status=task_status))
        print(*http.sendfile_workers.pids(), flush=True)

trio.run(main)
"""


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sendfile_workers_die_with_the_engine_even_on_sigkill(tmp_path: Path) -> None:
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE_IN_A_CHILD, str(tmp_path / "images")],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert engine.stdout is not None
        pids = [int(p) for p in engine.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        engine.kill()  # SIGKILL: the engine cannot stop its workers itself
        engine.wait(timeout=10)
        deadline = time.monotonic() + 30
        while not all(gone(p) for p in pids):
            assert time.monotonic() < deadline, f"orphaned sendfile workers {pids}"
            time.sleep(0.05)
    finally:
        engine.kill()
        engine.wait(timeout=10)
        assert engine.stdout is not None
        engine.stdout.close()
