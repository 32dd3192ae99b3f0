"""A head node: store, cache, boot services and the REST API in one trio nursery.

``run_head(config)`` opens the store named by the config (embedded SQLite or
etcd), loads the in-memory cache and follows its watch, registers this head
under a lease (so scripts list every live head and a dead head drops out),
then starts the HTTP boot engine, TFTP, DHCP and the API, each bound as the
config says (port 0 binds a free port), and reports a ``HeadPorts`` with the
real ports. The data plane reads only the cache; the two writes a boot makes
(status reports, enrolment of unknown MACs) go to the store off the hot path.

Operational visibility: ``head_stats`` gathers every service's counters (TFTP in
a child process reports its own over its stdout) for ``GET /api/v1/stats``, and
``log_activity`` logs a one-line summary of the totals when they changed.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from cwboot.api.app import create_app
from cwboot.api.image_routes import image_routes
from cwboot.api.power import power_routes
from cwboot.api.server import serve_api
from cwboot.api.stats import stats_routes
from cwboot.config import Config, TftpConfig
from cwboot.control.cache import ObjectCache
from cwboot.control.images import ImageError, ImageStore
from cwboot.control.objects import Conflict, NotFound, ObjectError
from cwboot.control.power import serve_power
from cwboot.control.repo import Objects
from cwboot.control.store import LeaseExpired, Store, StoreError, open_store
from cwboot.protocol.manifest import BadManifest
from cwboot.services.dhcp import serve_dhcp
from cwboot.services.http import serve_http
from cwboot.services.tftp import serve_tftp
from cwboot.tftp_process import counters_of

log = logging.getLogger("cwboot.head")


@dataclass
class HeadPorts:
    """What a running head bound: address nodes use, and each service's port (0 = disabled)."""

    name: str
    address: str
    api: int = 0
    http: int = 0
    tftp: int = 0
    dhcp: int = 0
    # The services' bound objects (with their statistics), by name.
    services: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> list[str]:
        """One line per listening service, for people."""
        lines = []
        if self.dhcp:
            lines.append(f"DHCP   udp {self.address}:{self.dhcp}")
        if self.tftp:
            lines.append(f"TFTP   udp {self.address}:{self.tftp}")
        if self.http:
            lines.append(f"HTTP   tcp http://{self.address}:{self.http}/  (iPXE scripts, kernels, images)")
        if self.api:
            api = self.services.get("api")
            url = api.url if api is not None else f"http://{self.address}:{self.api}"
            lines.append(f"API    tcp {url}/api/v1/  (REST; OpenAPI at /api/v1/openapi.json)")
            lines.append(f"WEB    tcp {url}/dashboard#token=<token>  (node status in a browser; a read token will do)")
        return lines


def head_name(config: Config) -> str:
    return config.head.name or socket.gethostname().split(".")[0]


class StatusReporter:
    """Writes node status reports (from the HTTP engine) into the store, off the hot path."""

    def __init__(self, objects: Objects, cache: ObjectCache, head: str, ttl: int) -> None:
        self.objects = objects
        self.cache = cache
        self.head = head
        self.ttl = ttl

    async def report(self, mac: str, fields: dict[str, str]) -> None:
        node = self.cache.node_by_mac(mac)
        if node is None:
            log.info("status report from unknown MAC %s ignored", mac)
            return
        stage = fields.get("stage", "")
        update: dict[str, Any] = {"stage": stage, "head": self.head, "mac": mac}
        if stage:
            update["phases"] = {stage: time.time()}
        hardware = {k[3:]: v for k, v in fields.items() if k.startswith("hw_")}
        if hardware:
            update["hardware"] = hardware
        try:
            await self.objects.put_status(node["uid"], update, ttl=self.ttl)
        except (ObjectError, StoreError) as exc:
            log.warning("could not record status of %s: %s", node.get("name"), exc)


async def keep_registered(
    objects: Objects,
    store: Store,
    doc: dict[str, Any],
    ttl: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep this head's ``head`` object alive under a lease; re-register if the lease is lost."""
    started = False
    while True:
        lease = await store.grant_lease(ttl)
        try:
            await objects.create("head", doc, lease=lease)
        except Conflict:
            # A previous run of this head (same name) whose lease has not expired yet.
            try:
                await objects.delete("head", doc["name"])
            except NotFound:
                pass
            await store.revoke_lease(lease)
            continue
        if not started:
            task_status.started()
            started = True
        try:
            while True:
                await trio.sleep(max(ttl / 3, 0.5))
                await store.refresh_lease(lease)
        except (LeaseExpired, StoreError) as exc:
            log.warning("head registration lost (%s); registering again", exc)
            await trio.sleep(1)


# How often the head looks for image store indexes changed behind its back (one stat per image).
IMAGES_SYNC_EVERY = 5.0


async def keep_images_mirrored(
    images: ImageStore, objects: Objects, stamps: dict[str, tuple[int, int]], every: float
) -> None:
    """Re-sync the ``image`` object of every image whose ``index.json`` changed since ``stamps``.

    The CLI writes the store directly; when it could not reach the API, only this brings
    the mirror (what ``cwboot images ls`` and the API show) up to date without a restart.
    No store traffic while nothing changed; a failed sync is retried at the next check.
    """
    failing: dict[str, str] = {}
    while True:
        await trio.sleep(every)
        try:
            now = images.index_stamps()
        except OSError as exc:
            log.warning("cannot read the image store's indexes: %s", exc)
            continue
        for name, stamp in now.items():
            if stamps.get(name) == stamp:
                continue
            try:
                await images.sync_objects(objects, [name])
            except (ObjectError, StoreError, ImageError, BadManifest, OSError) as exc:
                if failing.get(name) != str(exc):
                    log.warning("could not mirror image %s into its object: %s (will retry)", name, exc)
                failing[name] = str(exc)
                continue
            log.info("image %s changed in the image store: object re-synced", name)
            stamps[name] = stamp
            failing.pop(name, None)


# The TFTP child checks its counters this often and reports them when they changed.
TFTP_REPORT_EVERY = 1.0
# Longest line read from the TFTP child (a report is a few hundred bytes).
MAX_CHILD_LINE = 1 << 20
# How often the head logs its one-line activity summary (only when it changed).
STATS_LOG_EVERY = 60.0


@dataclass
class TftpProcess:
    """A TFTP service running in a child process (``tftp.own_process``)."""

    address: str
    port: int
    pid: int
    # The counters the child last reported ({} before its first report) and when (trio clock).
    stats: dict[str, Any] = field(default_factory=dict, repr=False)
    reported_at: float | None = None
    # Lines from the child that were not stats reports (ignored, counted).
    bad_reports: int = 0

    def take_report(self, line: bytes, now: float) -> None:
        """Keep the counters of one ``{"stats": {...}}`` line; count anything else."""
        try:
            stats = json.loads(line)["stats"]
            if not isinstance(stats, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.bad_reports += 1
            if self.bad_reports == 1:
                log.warning("the TFTP process (pid %d) wrote a line that is not a report: %.100r", self.pid, line)
            return
        self.stats, self.reported_at = stats, now


class LineReader:
    """Lines from a byte stream; a line longer than ``limit`` comes out in pieces."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int = MAX_CHILD_LINE) -> None:
        self.stream = stream
        self.limit = limit
        self.buffer = b""

    async def next_line(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
                return line
            if len(self.buffer) >= self.limit:
                line, self.buffer = self.buffer[: self.limit], self.buffer[self.limit :]
                return line
            data = await self.stream.receive_some(65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line or None
            self.buffer += data


# TftpConfig fields handed to the child as --set KEY=VALUE (numbers only: its parser casts by type).
_TFTP_CHILD_SETTINGS = ("max_transfers", "max_queued", "queue_timeout", "max_transfers_per_peer", "timeout", "retries",
                        "max_blksize", "max_windowsize")  # fmt: skip


async def serve_tftp_process(
    config: TftpConfig, *, root: str, task_status: trio.TaskStatus[TftpProcess] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``python -m cwboot.tftp_process`` as a child until cancelled (then it is killed by PID).

    The child's first line says where it bound; every later line is a report of its
    counters, kept in the TftpProcess this reports (``stats``, ``reported_at``).
    """
    args = [sys.executable, "-m", "cwboot.tftp_process", "--root", root,
            "--listen", config.listen, "--port", str(config.port),
            "--report-every", str(TFTP_REPORT_EVERY), "--stdin-is-parent"]  # fmt: skip
    for name in _TFTP_CHILD_SETTINGS:
        args += ["--set", f"{name}={getattr(config, name)}"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            # The child's stdin is a pipe only this process holds: if the head dies, even by
            # SIGKILL, the child reads end of file and exits (no orphaned TFTP server).
            functools.partial(
                trio.run_process, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False
            )
        )
        assert proc.stdout is not None
        lines = LineReader(proc.stdout)
        with trio.fail_after(30):
            line = await lines.next_line()
        if line is None:
            raise RuntimeError(f"the TFTP process exited ({await proc.wait()}) before binding")
        bound = json.loads(line)
        child = TftpProcess(bound["address"], bound["port"], proc.pid)
        task_status.started(child)
        # Read every report until the child closes its stdout, so the pipe never fills.
        while (line := await lines.next_line()) is not None:
            child.take_report(line, trio.current_time())
        code = await proc.wait()
        raise RuntimeError(f"the TFTP process (pid {proc.pid}) exited with status {code}")


def service_stats(ports: HeadPorts, now: float) -> dict[str, dict[str, Any]]:
    """Each running service's counters as plain JSON values (``now``: the trio clock).

    Every service names its drops-by-reason ``drops``. TFTP in a child process shows the
    counters of its last report, ``pid`` and ``report_age`` (seconds; None before the
    first report); in the head's own process its ``pid`` is None.
    """
    out: dict[str, dict[str, Any]] = {}
    dhcp = ports.services.get("dhcp")
    if dhcp is not None:
        out["dhcp"] = counters_of(dhcp.stats)
        out["dhcp"]["drops"] = out["dhcp"].pop("dropped")
    http = ports.services.get("http")
    if http is not None:
        out["http"] = counters_of(http.stats)
    tftp = ports.services.get("tftp")
    if isinstance(tftp, TftpProcess):
        age = None if tftp.reported_at is None else round(now - tftp.reported_at, 3)
        out["tftp"] = {"pid": tftp.pid, "report_age": age, "bad_reports": tftp.bad_reports, **tftp.stats}
    elif tftp is not None:
        out["tftp"] = {"pid": None, **counters_of(tftp.stats)}
    power = ports.services.get("power")
    if power is not None:
        out["power"] = counters_of(power.stats)
    return out


def head_stats(ports: HeadPorts, started: float, uptime: float, now: float) -> dict[str, Any]:
    """The answer of ``GET /api/v1/stats``: head name, start (epoch) and uptime, per-service counters."""
    return {"head": ports.name, "started": started, "uptime": round(uptime, 3), "services": service_stats(ports, now)}


# TFTP outcomes that are not failures: a finished transfer, a size probe (ERROR 8 after the OACK).
_TFTP_FINE = ("completed", "probed")


def activity_summary(services: dict[str, dict[str, Any]]) -> str:
    """One log line of totals since start: DHCP replies/drops, HTTP requests/503s, TFTP transfers/failures."""
    parts = []
    if "dhcp" in services:
        dhcp = services["dhcp"]
        parts.append(f"dhcp {sum(dhcp['replied'].values())} replies, {sum(dhcp['drops'].values())} drops")
    if "http" in services:
        http = services["http"]
        parts.append(f"http {http['requests']} requests, {http['responses'].get('503', 0)} 503s, "
                     f"{sum(http['drops'].values())} drops")  # fmt: skip
    if "tftp" in services:
        outcomes: dict[str, int] = services["tftp"].get("outcomes", {})
        failed = sum(n for outcome, n in outcomes.items() if outcome not in _TFTP_FINE)
        parts.append(f"tftp {sum(outcomes.values())} transfers, {failed} failed")
    return "; ".join(parts)


async def log_activity(ports: HeadPorts, every: float) -> None:
    """Log ``activity_summary`` every ``every`` seconds when it changed since the last line."""
    last = activity_summary(service_stats(ports, trio.current_time()))
    while True:
        await trio.sleep(every)
        line = activity_summary(service_stats(ports, trio.current_time()))
        if line != last:
            log.info("totals since start: %s", line)
            last = line


def live_head_urls(cache: ObjectCache, own_url: str) -> Sequence[str]:
    """Base HTTP URLs of every live head, this one first (scripts hand nodes all of them)."""
    others = sorted(h["http_url"] for h in cache.all("head") if h.get("http_url") and h["http_url"] != own_url)
    return [own_url, *others]


async def run_head(
    config: Config,
    *,
    stats_log_every: float = STATS_LOG_EVERY,
    images_sync_every: float = IMAGES_SYNC_EVERY,
    task_status: trio.TaskStatus[HeadPorts] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a head node until cancelled; reports HeadPorts once every service listens.

    Every ``stats_log_every`` seconds it logs a one-line summary of its services'
    totals when they changed (``activity_summary``); ``GET /api/v1/stats`` has the rest.
    Every ``images_sync_every`` seconds it re-syncs the image objects whose index changed.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    name = head_name(config)
    started, started_clock = time.time(), trio.current_time()
    store = open_store(config)
    try:
        objects = Objects(store)
        cache = ObjectCache(store)
        images = ImageStore.from_config(config)
        ports = HeadPorts(name=name, address=config.head.advertise_address)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            stamps = images.index_stamps()  # before the sync: a change during it is seen later
            await images.sync_objects(objects)
            nursery.start_soon(keep_images_mirrored, images, objects, stamps, images_sync_every)
            reporter = StatusReporter(objects, cache, name, ttl=max(config.store.lease_ttl, 900))
            own_url = ""
            if config.http.enabled:
                # The URL is known only once bound; the heads() callable reads it late.
                http = await nursery.start(
                    functools.partial(
                        serve_http,
                        config,
                        cache,
                        images,
                        heads=lambda: live_head_urls(cache, own_url),
                        report_status=reporter.report,
                    )
                )
                ports.http, ports.services["http"] = http.port, http
                own_url = f"http://{ports.address}:{http.port}"
            if config.tftp.enabled and config.tftp.own_process:
                tftp = await nursery.start(
                    functools.partial(serve_tftp_process, config.tftp, root=str(config.tftp_root))
                )
                ports.tftp, ports.services["tftp"] = tftp.port, tftp
            elif config.tftp.enabled:
                tftp = await nursery.start(functools.partial(serve_tftp, config.tftp, root=config.tftp_root))
                ports.tftp, ports.services["tftp"] = tftp.port, tftp
            if config.dhcp.enabled:
                pool = config.dhcp.enrol_pool
                dhcp = await nursery.start(
                    functools.partial(
                        serve_dhcp,
                        config.dhcp,
                        cache,
                        head_address=ports.address,
                        http_port=ports.http,
                        enrol=lambda mac: objects.enrol(mac, pool),
                    )
                )
                ports.dhcp, ports.services["dhcp"] = dhcp.port, dhcp
            routes = []
            if config.power.enabled:
                # IPMI runs in worker processes with few descriptors (pyghmi's select() loop).
                power = await nursery.start(
                    serve_power, config.power, lambda ref: cache.get("node", ref)
                )
                ports.services["power"] = power
                routes = power_routes(power)
            routes += image_routes(images, objects)
            routes += stats_routes(
                lambda: head_stats(ports, started, trio.current_time() - started_clock, trio.current_time())
            )
            if config.api.enabled:
                api = await nursery.start(serve_api, create_app(objects, config, routes), config)
                ports.api, ports.services["api"] = api.port, api
            await nursery.start(
                keep_registered,
                objects,
                store,
                {
                    "name": name,
                    "addresses": [ports.address],
                    "http_url": own_url,
                    "api_url": f"http://{ports.address}:{ports.api}" if ports.api else "",
                    "started": started,
                },
                config.store.lease_ttl,
            )
            nursery.start_soon(log_activity, ports, stats_log_every)
            task_status.started(ports)
            await trio.sleep(math.inf)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def serve(config: Config) -> int:
    """``cwboot serve``: run the head in the foreground until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports: HeadPorts = await nursery.start(run_head, config)
            print(f"cwboot head {ports.name} serving (store: {config.store.backend}):", flush=True)
            for line in ports.describe():
                print("  " + line, flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(main)
    return 0
