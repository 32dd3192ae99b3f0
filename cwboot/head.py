"""A head node: store, cache, boot services and the REST API in one trio nursery.

``run_head(config)`` opens the store named by the config (embedded SQLite or
etcd), loads the in-memory cache and follows its watch, registers this head
under a lease (so scripts list every live head and a dead head drops out),
then starts the HTTP boot engine, TFTP, DHCP and the API, each bound as the
config says (port 0 binds a free port), and reports a ``HeadPorts`` with the
real ports. The data plane reads only the cache; the two writes a boot makes
(status reports, enrolment of unknown MACs) go to the store off the hot path.
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
from cwboot.api.power import power_routes
from cwboot.api.server import serve_api
from cwboot.config import Config, TftpConfig
from cwboot.control.cache import ObjectCache
from cwboot.control.images import ImageStore
from cwboot.control.objects import Conflict, NotFound, ObjectError
from cwboot.control.power import serve_power
from cwboot.control.repo import Objects
from cwboot.control.store import LeaseExpired, Store, StoreError, open_store
from cwboot.services.dhcp import serve_dhcp
from cwboot.services.http import serve_http
from cwboot.services.tftp import serve_tftp

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


@dataclass
class TftpProcess:
    """A TFTP service running in a child process (``tftp.own_process``)."""

    address: str
    port: int
    pid: int


# TftpConfig fields handed to the child as --set KEY=VALUE (numbers only: its parser casts by type).
_TFTP_CHILD_SETTINGS = ("max_transfers", "max_transfers_per_peer", "timeout", "retries", "max_blksize", "max_windowsize")


async def serve_tftp_process(
    config: TftpConfig, *, root: str, task_status: trio.TaskStatus[TftpProcess] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``python -m cwboot.services.tftp`` as a child until cancelled (then it is killed by PID)."""
    args = [sys.executable, "-m", "cwboot.services.tftp", "--root", root,
            "--listen", config.listen, "--port", str(config.port)]  # fmt: skip
    for name in _TFTP_CHILD_SETTINGS:
        args += ["--set", f"{name}={getattr(config, name)}"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            functools.partial(trio.run_process, args, stdout=subprocess.PIPE, check=False)
        )
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await proc.stdout.receive_some(4096)
                if not data:
                    raise RuntimeError(f"the TFTP process exited ({await proc.wait()}) before binding")
                line += data
        bound = json.loads(line.splitlines()[0])
        task_status.started(TftpProcess(bound["address"], bound["port"], proc.pid))
        code = await proc.wait()
        raise RuntimeError(f"the TFTP process (pid {proc.pid}) exited with status {code}")


def live_head_urls(cache: ObjectCache, own_url: str) -> Sequence[str]:
    """Base HTTP URLs of every live head, this one first (scripts hand nodes all of them)."""
    others = sorted(h["http_url"] for h in cache.all("head") if h.get("http_url") and h["http_url"] != own_url)
    return [own_url, *others]


async def run_head(config: Config, *, task_status: trio.TaskStatus[HeadPorts] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a head node until cancelled; reports HeadPorts once every service listens."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    name = head_name(config)
    store = open_store(config)
    try:
        objects = Objects(store)
        cache = ObjectCache(store)
        images = ImageStore.from_config(config)
        ports = HeadPorts(name=name, address=config.head.advertise_address)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await images.sync_objects(objects)
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
                    "started": time.time(),
                },
                config.store.lease_ttl,
            )
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
