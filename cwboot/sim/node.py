"""Simulated compute nodes: the whole network boot, over the real protocols, thousands per process.

One node, as firmware + iPXE + mount_rootfs would do it:

    dhcp_pxe   DISCOVER/OFFER/REQUEST/ACK as a PXE ROM (options 60/93/94/97)
    tftp       the loader named by the ACK, from next-server (cwboot's TFTP client core)
    dhcp_ipxe  DORA again as iPXE (option 77 "iPXE"): the boot file is the script's URL
    script     GET the iPXE script; follow it (kernel, initrd, command line)
    kernel     GET the kernel
    initrd     GET the initramfs
    rootfs     GET the manifest, then every chunk (or the one stream); each chunk verified
    status     POST /boot/status/{mac} stage=up

Each phase is timed (``NodeResult.phases``: name -> (start, end), seconds on
the storm's clock). A failed phase is retried with the firmware's back-off;
after ``max_boot_attempts`` failed boots the node is a failure. An HTTP 503
with Retry-After (admission control) is a *wait*, not a failure: the node
sleeps Retry-After plus jitter and asks again.

Cheap at scale: DHCP goes through one shared relay socket
(cwboot.sim.dhcp_client), HTTP bodies are hashed straight out of one shared
receive buffer (cwboot.sim.http_client) and never kept, and rootfs frames are
checked against digests proven once per chunk (cwboot.sim.rootfs) unless
``decode=True``.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import trio

from cwboot.protocol import manifest as manifest_mod
from cwboot.protocol.manifest import BadManifest, Manifest
from cwboot.protocol.tftp._client import ClientState, ReadClient
from cwboot.sim import dhcp_client, ipxe_script
from cwboot.sim.dhcp_client import DhcpFailed, RelaySocket
from cwboot.sim.http_client import ConnStats, HttpConnection, HttpError, SocketFactory
from cwboot.sim.rootfs import ChunkMismatch, FrameDigests, StreamVerifier

T = TypeVar("T")
PHASES = ("dhcp_pxe", "tftp", "dhcp_ipxe", "script", "kernel", "initrd", "rootfs", "status")
spec = dhcp_client.spec


class PhaseFailed(Exception):
    """A phase gave up; the node reboots (up to max_boot_attempts)."""


@dataclass
class NodeConfig:
    """How the simulated firmware behaves; defaults follow real PXE ROMs and iPXE."""

    arch: int = dhcp_client.ARCH_BIOS
    # Waits before each DHCP retransmission: PXE ROM (RFC 2131 4.1 / PXE 2.1) and iPXE.
    pxe_dhcp_timeouts: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    ipxe_dhcp_timeouts: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    tftp_blksize: int = 1432
    # 0: do not ask for windowsize (PXE ROMs never do); UEFI firmware asks for 4 or more.
    tftp_windowsize: int = 0
    tftp_timeout: float = 2.0
    tftp_retries: int = 5
    # "chunks": GET /chunks/{id} one by one (mount_rootfs); "stream": one GET of the stream.
    rootfs: str = "chunks"
    # Decode and prove every frame on the node itself (costly); else compare proven digests.
    decode: bool = False
    report_status: bool = True
    max_boot_attempts: int = 3
    # Back-off between failed boots (firmware reboot), and between HTTP retries of one request.
    reboot_delay: float = 2.0
    http_retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    # Admission-control waits (503) allowed per request before it counts as a failure.
    max_waits: int = 1000
    # A node that is not up after this long is a failure.
    deadline: float = 600.0


@dataclass
class NodeResult:
    index: int
    mac: str
    ok: bool = False
    error: str = ""
    # phase -> (start, end) on the storm's clock (seconds since its start).
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: float = 0.0
    up: float = 0.0
    boot_attempts: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    # 503 + Retry-After answers obeyed, and the seconds spent waiting on them.
    waits: int = 0
    waited: float = 0.0
    chunks_verified: int = 0
    tftp_retransmits: int = 0
    bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index, "mac": self.mac, "ok": self.ok, "error": self.error,
            "started": self.started, "up": self.up, "boot_attempts": self.boot_attempts,
            "phases": {k: list(v) for k, v in self.phases.items()}, "retries": self.retries,
            "waits": self.waits, "waited": self.waited, "chunks_verified": self.chunks_verified,
            "tftp_retransmits": self.tftp_retransmits, "bytes": self.bytes,
        }  # fmt: skip


@dataclass
class SwarmContext:
    """What every node of one storm shares."""

    relay: RelaySocket
    digests: FrameDigests
    config: NodeConfig
    # Origin of the storm's clock (trio.current_time()).
    t0: float
    # TFTP server port (DHCP only names the host: next-server); host override for odd setups.
    tftp_port: int = 69
    tftp_host: str = ""
    make_socket: SocketFactory = socket.socket
    http_stats: ConnStats = field(default_factory=ConnStats)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)


def mac_for(index: int, prefix: bytes = b"\x52\x54\x00") -> str:
    """Known MAC of simulated node ``index``: 52:54:00 + 3 bytes of the index (0..16M)."""
    return (prefix + index.to_bytes(3, "big")).hex(":")


class SimNode:
    """One simulated machine; ``await boot()`` runs it until up or failed."""

    def __init__(self, index: int, mac: str, source: str, ctx: SwarmContext) -> None:
        self.index = index
        self.mac = mac
        self.mac_bytes = bytes.fromhex(mac.replace(":", ""))
        self.source = source
        self.ctx = ctx
        self.result = NodeResult(index, mac)
        self._conns: dict[tuple[str, int], HttpConnection] = {}
        self._xid = (index * 2654435761 + ctx.rng.getrandbits(16)) & 0xFFFFFFFF

    def _now(self) -> float:
        return trio.current_time() - self.ctx.t0

    def _retry(self, phase: str) -> None:
        self.result.retries[phase] = self.result.retries.get(phase, 0) + 1

    def _count(self, phase: str, n: int) -> None:
        self.result.bytes[phase] = self.result.bytes.get(phase, 0) + n

    async def boot(self) -> NodeResult:
        r = self.result
        r.started = self._now()
        with trio.move_on_after(self.ctx.config.deadline) as scope:
            for attempt in range(1, self.ctx.config.max_boot_attempts + 1):
                r.boot_attempts = attempt
                try:
                    await self._boot_once()
                except (PhaseFailed, DhcpFailed, HttpError, ChunkMismatch, OSError) as exc:
                    r.error = f"{type(exc).__name__}: {exc}"
                    self._close()
                    await trio.sleep(self.ctx.config.reboot_delay * attempt)
                    continue
                r.ok, r.error, r.up = True, "", self._now()
                break
        if scope.cancelled_caught:
            r.error = f"not up after {self.ctx.config.deadline} s ({r.error})"
        self._close()
        return r

    def _close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    async def _phase(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        start = self._now()
        value = await run()
        self.result.phases[name] = (start, self._now())
        return value

    async def _boot_once(self) -> None:
        cfg = self.ctx.config
        pxe = await self._phase("dhcp_pxe", lambda: self._dora("pxe", cfg.pxe_dhcp_timeouts))
        if not pxe.boot_file:
            raise PhaseFailed("PXE ACK without a boot file")
        await self._phase("tftp", lambda: self._tftp(pxe))
        lease = await self._phase("dhcp_ipxe", lambda: self._dora("ipxe", cfg.ipxe_dhcp_timeouts))
        settings = ipxe_script.node_settings(self.mac, lease.address)
        script_url = ipxe_script.expand(lease.boot_file, settings)
        if not script_url.startswith("http://"):
            raise PhaseFailed(f"iPXE boot file {script_url!r} is not an HTTP URL (iPXE loop?)")
        boot = await self._phase("script", lambda: self._script(script_url, settings))
        await self._phase("kernel", lambda: self._get_counted("kernel", [boot.kernel]))
        await self._phase("initrd", lambda: self._initrds(boot.initrds))
        images = ipxe_script.rootfs_urls(boot.cmdline)
        if images:
            await self._phase("rootfs", lambda: self._rootfs(images))
        if cfg.report_status:
            heads = ipxe_script.boot_heads(boot.cmdline) or [_origin(script_url)]
            await self._phase("status", lambda: self._status(heads))

    # -- DHCP

    async def _dora(self, phase: str, timeouts: tuple[float, ...]) -> dhcp_client.Lease:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        options = dhcp_client.firmware_options(phase, self.mac_bytes, self.ctx.config.arch)
        jittered = [t + self.ctx.rng.uniform(-0.5, 0.5) * min(1.0, t / 4) for t in timeouts]
        started = trio.current_time()
        offer = await dhcp_client.exchange(
            self.ctx.relay, self.mac_bytes, self._xid, spec.DHCPDISCOVER, options,
            (spec.DHCPOFFER,), jittered, started,
        )  # fmt: skip
        server_id = offer.options.get(spec.OPT_SERVER_ID, b"")
        request_options = [
            (spec.OPT_REQUESTED_IP, offer.yiaddr),
            *([(spec.OPT_SERVER_ID, server_id)] if server_id else []),
            *options,
        ]
        ack = await dhcp_client.exchange(
            self.ctx.relay, self.mac_bytes, self._xid, spec.DHCPREQUEST, request_options,
            (spec.DHCPACK,), jittered, started,
        )  # fmt: skip
        return dhcp_client.lease_from(ack)

    # -- TFTP

    async def _tftp(self, lease: dhcp_client.Lease) -> None:
        cfg = self.ctx.config
        host = self.ctx.tftp_host or lease.next_server
        options = {"blksize": str(cfg.tftp_blksize), "tsize": "0"}
        if cfg.tftp_windowsize:
            options["windowsize"] = str(cfg.tftp_windowsize)
        for attempt in range(3):
            if attempt:
                self._retry("tftp")
                await trio.sleep(cfg.reboot_delay * attempt)
            client = ReadClient(lease.boot_file, options=options, timeout=cfg.tftp_timeout,
                                retries=cfg.tftp_retries)  # fmt: skip
            raw = self.ctx.make_socket(socket.AF_INET, socket.SOCK_DGRAM)
            with raw:
                raw.setblocking(False)
                raw.bind((self.source, 0))
                await self._run_tftp(client, raw, (host, self.ctx.tftp_port))
            self.result.tftp_retransmits += client.retransmits
            if client.state is ClientState.DONE:
                if client.tsize is not None and client.tsize != len(client.data):
                    raise PhaseFailed(f"TFTP tsize {client.tsize} but {len(client.data)} bytes")
                self._count("tftp", len(client.data))
                return
            error = client.error
        raise PhaseFailed(f"TFTP {lease.boot_file}: {error}")

    async def _run_tftp(
        self, client: ReadClient, sock: socket.socket, server: tuple[str, int]
    ) -> None:
        """Drive the sans-IO client; the first answer's port is the transfer's (RFC 1350 4 TID).

        Non-blocking reads straight from the socket: the scheduler is entered
        only to wait, so a thousand lockstep transfers cost little.
        """
        await _sendto(sock, client.start(trio.current_time()).datagrams, server)
        peer: tuple[str, int] | None = None
        while not client.finished:
            try:
                data, address = sock.recvfrom(65536)
            except BlockingIOError:
                deadline = (
                    client.deadline if client.deadline is not None else trio.current_time() + 1
                )
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_readable(sock)
                    continue
                await _sendto(sock, client.timeout(trio.current_time()).datagrams, peer or server)
                continue
            if peer is None and address[0] == server[0]:
                peer = address
            if peer is None or address != peer:
                continue  # a stray port: not our transfer (RFC 1350 4: ERROR 5 is optional)
            await _sendto(sock, client.receive_untrusted(data, trio.current_time()).datagrams, peer)

    # -- HTTP

    def _conn(self, url: str) -> tuple[HttpConnection, str]:
        parts = urlsplit(url)
        key = (parts.hostname or "", parts.port or 80)
        conn = self._conns.get(key)
        if conn is None:
            conn = HttpConnection(key[0], key[1], source=self.source,
                                  make_socket=self.ctx.make_socket, stats=self.ctx.http_stats)  # fmt: skip
            self._conns[key] = conn
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return conn, path or "/"

    async def _http(
        self,
        phase: str,
        url: str,
        *,
        method: str = "GET",
        body: bytes = b"",
        headers: dict[str, str] | Callable[[], dict[str, str]] | None = None,
        on_data: Callable[[memoryview], None] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> bytes:
        """One request with retries (back-off) and admission-control waits; returns a collected body."""
        cfg = self.ctx.config
        failures = waits = 0
        while True:
            conn, path = self._conn(url)
            try:
                fields = headers() if callable(headers) else headers
                response = await conn.request(
                    method, path, body=body, headers=fields, on_data=on_data
                )
            except HttpError as exc:
                problem = str(exc)
            else:
                self._count(phase, response.body_bytes)
                if response.status == 503 and waits < cfg.max_waits:
                    waits += 1
                    delay = _retry_after(response.headers) * self.ctx.rng.uniform(0.5, 1.5)
                    self.result.waits += 1
                    self.result.waited += delay
                    if on_retry is not None:
                        on_retry()
                    await trio.sleep(delay)
                    continue
                if 200 <= response.status < 300:
                    return response.body
                problem = f"HTTP {response.status} for {url}"
                if 400 <= response.status < 500:
                    raise PhaseFailed(problem)
            if failures >= len(cfg.http_retry_delays):
                raise PhaseFailed(f"{method} {url}: {problem}")
            self._retry(phase)
            if on_retry is not None:
                on_retry()
            await trio.sleep(cfg.http_retry_delays[failures] * self.ctx.rng.uniform(0.75, 1.25))
            failures += 1

    async def _script(self, url: str, settings: dict[str, str]) -> ipxe_script.BootSpec:
        slept = 0.0
        for _ in range(100):
            text = (await self._http("script", url)).decode("utf-8", "replace")
            try:
                boot = ipxe_script.follow(text, url, settings)
            except ipxe_script.ScriptError as exc:
                raise PhaseFailed(f"script {url}: {exc}") from None
            slept += boot.slept
            if boot.slept:
                await trio.sleep(boot.slept)
            if not boot.chain:
                boot.slept = slept
                return boot
            url = boot.chain
        raise PhaseFailed(f"script {url}: more than 100 chained scripts")

    async def _get_counted(self, phase: str, urls: list[str]) -> None:
        for url in urls:
            await self._http(phase, url, on_data=_discard)

    async def _initrds(self, urls: list[str]) -> None:
        await self._get_counted("initrd", urls)

    async def _manifest(self, base: str) -> Manifest:
        url = f"{base}/manifest"
        cached = self.ctx.manifests.get(url)
        data = await self._http("rootfs", url)
        if cached is not None and cached.to_json() == data:
            return cached
        try:
            m = manifest_mod.parse_untrusted(data)
        except BadManifest as exc:
            raise PhaseFailed(f"manifest {url}: {exc}") from None
        self.ctx.manifests[url] = m
        return m

    async def _rootfs(self, bases: list[str]) -> None:
        """mount_rootfs: manifest, then every chunk verified; the next head when one fails."""
        problem = ""
        for base in bases:
            try:
                m = await self._manifest(base)
                if self.ctx.config.rootfs == "stream":
                    await self._rootfs_stream(base, m)
                else:
                    await self._rootfs_chunks(base, m)
                return
            except (PhaseFailed, HttpError) as exc:
                problem = str(exc)
                self._retry("rootfs_failover")
        raise PhaseFailed(f"rootfs from every head failed; last: {problem}")

    async def _rootfs_chunks(self, base: str, m: Manifest) -> None:
        origin = _origin(base)
        decode = self.ctx.config.decode
        for chunk in m.chunks:
            # A retried request starts the chunk over with a fresh verifier.
            current = [StreamVerifier([chunk], self.ctx.digests, decode=decode)]

            def feed(view: memoryview, current: list[StreamVerifier] = current) -> None:
                current[0].feed(view)

            def restart(
                current: list[StreamVerifier] = current, chunk: manifest_mod.Chunk = chunk
            ) -> None:
                current[0] = StreamVerifier([chunk], self.ctx.digests, decode=decode)

            await self._http(
                "rootfs", f"{origin}/chunks/{chunk.id}", on_data=feed, on_retry=restart
            )
            if not current[0].done:
                raise ChunkMismatch(f"chunk {chunk.id}: short body")
            self.result.chunks_verified += 1

    async def _rootfs_stream(self, base: str, m: Manifest) -> None:
        """One GET of the stream; after a cut, resume with Range from the last whole chunk."""
        decode = self.ctx.config.decode
        offsets = m.compressed_offsets
        done_chunks = 0
        verifier = StreamVerifier(m.chunks, self.ctx.digests, decode=decode)

        def restart() -> None:
            nonlocal verifier, done_chunks
            done_chunks += verifier.verified
            verifier = StreamVerifier(m.chunks[done_chunks:], self.ctx.digests, decode=decode)

        def headers() -> dict[str, str]:
            return {"Range": f"bytes={offsets[done_chunks]}-"} if done_chunks else {}

        await self._http("rootfs", f"{base}/stream", headers=headers,
                         on_data=lambda v: verifier.feed(v), on_retry=restart)  # fmt: skip
        if not verifier.done:
            raise ChunkMismatch("stream ended before the last chunk")
        self.result.chunks_verified += done_chunks + verifier.verified

    async def _status(self, heads: list[str]) -> None:
        body = json.dumps({"stage": "up", "source": "cwboot-sim"}).encode()
        mac = self.mac.replace(":", "-")
        problem = ""
        for head in heads:
            try:
                await self._http("status", f"{head}/boot/status/{mac}", method="POST", body=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
                return
            except PhaseFailed as exc:
                problem = str(exc)
        raise PhaseFailed(f"status report failed on every head: {problem}")


async def _sendto(sock: socket.socket, datagrams: list[bytes], peer: tuple[str, int]) -> None:
    for datagram in datagrams:
        while True:
            try:
                sock.sendto(datagram, peer)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
    await trio.lowlevel.checkpoint()


def _discard(view: memoryview) -> None:
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _retry_after(headers: dict[str, str]) -> float:
    raw = headers.get("retry-after", "")
    try:
        return min(60.0, max(0.1, float(raw)))
    except ValueError:
        return 1.0
