"""Boot storms: N simulated nodes powered on at once against a head, a running server, or a baseline.

``run_storm(options)`` does, in one run and on one link:

1. the link: loopback (127.0.0.0/8), or a namespace pair (cwboot.sim.netns)
   with an optional ``tc`` rate on the head's egress (``rate="1gbit"``);
2. the content (cwboot.sim.content): the rootfs image, a kernel and an
   initramfs imported into cwboot's image store in a temp state dir;
3. the target: ``head`` — a cwboot head started as its own process
   (cwboot.sim.head_process: ``run_head`` with the embedded store, N nodes
   enrolled with known MACs); ``running`` — a head someone else runs
   (``RunningTarget``: ports and URLs); ``dnsmasq`` — dnsmasq + nginx serving
   the same bytes (cwboot.sim.baseline; namespace pair only);
4. the reference fetch (every chunk decoded and proven once) and the
   bandwidth floor (cwboot.sim.floor: bare sendfile of the same stream, same
   client code, same link);
5. the storm (cwboot.sim.swarm), while the server processes' CPU time and
   RSS are sampled with psutil; with ``power="head-api"`` the head under test
   powers the nodes on itself (``_HeadPower``: simulated BMCs, the head's
   ``POST /api/v1/power/on``), so it does IPMI while it serves their boots;
6. the report (``StormReport``): wall time to all-up, failures, per-phase and
   whole-boot p50/p95/p99, server CPU and peak RSS, bytes served, the floor
   and wall/floor, as JSON and a one-screen summary; ``plot`` draws nodes-up
   over time (PNG).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import trio

from cwboot import config as cwconfig
from cwboot.api.auth import admin_token_path, ensure_token_file
from cwboot.control.images import ImageStore
from cwboot.sim import baseline, floor, head_process, ipxe_script, netns
from cwboot.sim import content as content_mod
from cwboot.sim.http_client import HttpConnection, HttpError
from cwboot.sim.node import PHASES, NodeConfig, NodeResult, mac_for
from cwboot.sim.rootfs import FrameDigests
from cwboot.sim.swarm import (
    LOOPBACK_NODE_NETWORK,
    SwarmResult,
    SwarmTargets,
    prove_image,
    run_swarm,
)

TARGETS = ("head", "running", "dnsmasq")
# "": all nodes at once (or launch_rate); "ipmi": cwboot's power service in this harness;
# "head-api": the head under test, through its REST API (see StormOptions.power).
POWER_MODES = ("", "ipmi", "head-api")
# TcpExt counters the report keeps per namespace: retransmission timeouts (and the spurious
# ones), and segments a receiver dropped (socket backlog full while the reader held the socket,
# receive queue over its buffer, pruned).
LINK_TCPEXT = ("TCPTimeouts", "TCPSpuriousRTOs", "TCPBacklogDrop", "TCPRcvQDrop", "PruneCalled",
               "TCPOFODrop", "TCPZeroWindowDrop")  # fmt: skip
# What the head may print after its ports line (its final counters) that the storm reads.
MAX_FINAL_OUTPUT = 1 << 20


@dataclass
class RunningTarget:
    """A server that is already up: where to send DHCP, which TFTP port, the HTTP base URL."""

    dhcp: tuple[str, int]
    tftp_port: int
    http_url: str
    image: str
    version: str = "latest"
    # Relay (giaddr) address and the port the server answers relays on (67 for cwboot and dnsmasq).
    relay: tuple[str, int] = ("", 67)
    # Server processes to measure (CPU, RSS); empty: not measured.
    pids: list[int] = field(default_factory=list)


@dataclass
class StormOptions:
    nodes: int = 100
    image: str = "synthetic:32"
    kernel_mib: float = 4.0
    initramfs_mib: float = 8.0
    target: str = "head"
    running: RunningTarget | None = None
    netns: bool = False
    # tc token-bucket rate of the head's link ("1gbit", "10gbit"); namespace pair only.
    rate: str = ""
    node: NodeConfig = field(default_factory=NodeConfig)
    # Power-on wave: nodes started per second (0: all at once).
    launch_rate: float = 0.0
    # "ipmi": every node has a simulated BMC (cwboot.sim.bmc, loopback) and is powered on
    # through cwboot's power service (IPMI over RMCP+, pyghmi workers) run in this harness;
    # a node starts booting when its BMC's power-on hook fires. "head-api": the same BMCs,
    # but each node's power_uri is in the head's store and the head under test powers them
    # all on (POST /api/v1/power/on, bootdev pxe, its own IPMI workers and budget) while it
    # serves the boots of those already up; target "head" only. "": all nodes at once.
    power: str = ""
    measure_floor: bool = True
    floor_connections: int = 32
    floor_bytes: int = 1 << 30
    # The floor is the fastest of this many samples (one sample is a third of a second on
    # this machine: one busy moment moved it by 20%); every sample is in the report.
    floor_samples: int = 3
    # Extra head settings (``section.key=value``), e.g. "http.max_streams=64".
    head_settings: list[str] = field(default_factory=list)
    # Kept when given (logs, configs); a temp dir removed afterwards otherwise.
    workdir: str = ""


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max by the nearest-rank method ({} when empty)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1]}


@dataclass
class StormReport:
    target: str
    link: str
    nodes: int
    up: int
    failures: int
    # Seconds from power-on to the last node up (to the last node finished, failed or not).
    wall: float
    # Each node's whole boot (power-on to up) and each phase's duration.
    boot: dict[str, float]
    phases: dict[str, dict[str, float]]
    # Node-up times, sorted (the plot's curve).
    up_times: list[float]
    server: dict[str, float]
    bytes_served: int
    rootfs_bytes: int
    floor: dict[str, float]
    waits: int
    retries: dict[str, int]
    errors: dict[str, int]
    settings: dict[str, Any]
    # --power head-api: the head's power-on through its API (see _HeadPower.result).
    power: dict[str, Any] = field(default_factory=dict)
    # Target "head": the head's own counters at the end ({service: {drops: {reason: n}, ...}}).
    server_counters: dict[str, Any] = field(default_factory=dict)
    # What the network did during the storm (``link_counters``): TCP retransmissions and
    # retransmission timeouts per namespace, packets the kernel's backlog dropped (host-wide).
    link_counters: dict[str, int] = field(default_factory=dict)
    node_results: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self, *, with_nodes: bool = False) -> str:
        doc = dataclasses.asdict(self)
        if not with_nodes:
            doc.pop("node_results")
        return json.dumps(doc, indent=2, sort_keys=True)

    def summary(self) -> str:
        lines = [
            f"storm: {self.nodes} nodes -> {self.target} over {self.link}",
            f"  up {self.up}/{self.nodes}, failures {self.failures}, wall {self.wall:.2f} s",
            "  boot   " + _fmt(self.boot),
        ]
        lines += [f"  {name:<9}" + _fmt(p) for name, p in self.phases.items()]
        s = self.server
        if s:
            lines.append(
                f"  server CPU {s.get('cpu_seconds', 0):.2f} s ({s.get('cpu_cores', 0):.2f} cores), "
                f"peak RSS {s.get('rss_peak_mib', 0):.1f} MiB"
            )
        lines.append(
            f"  bytes served {self.bytes_served / 1e9:.3f} GB ({self.rootfs_bytes / 1e9:.3f} GB rootfs)"
        )
        if self.floor:
            f = self.floor
            lines.append(
                f"  floor: bare sendfile {f['bytes_per_second'] / 1e9:.2f} GB/s -> {f['seconds']:.2f} s "
                f"for these bytes; wall/floor {f['wall_over_floor']:.2f}"
            )
        lines.append(
            f"  503 waits {self.waits}, retries {self.retries or 0}, errors {self.errors or 0}"
        )
        drops = {
            f"{service} {reason}": n
            for service, counters in sorted(self.server_counters.items())
            for reason, n in sorted((counters.get("drops") or {}).items())
            if n
        }
        if self.server_counters:
            lines.append(f"  server drops {drops or 0}")
        if self.link_counters:
            lines.append("  network " + ", ".join(f"{k} {v}" for k, v in sorted(self.link_counters.items())))
        p = self.power
        if p:
            lines.append(
                f"  power-on by the head (API): {p['ok']}/{p['nodes']} ok, {p['failed']} failed; "
                f"last BMC on {p['last_on_seconds']:.2f} s, API answered {p['api_seconds']:.2f} s "
                f"after the call; peak sessions per BMC {p['bmc']['peak_sessions_per_bmc']}; "
                f"{p['nodes_up_before_last_on']} nodes up before the last power-on"
            )
        return "\n".join(lines)


def _fmt(p: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:7.3f}" for k, v in p.items()) if p else "-"


class ProcessMeter:
    """CPU seconds and peak RSS of some processes (and their children) over a window."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.procs: list[psutil.Process] = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                self.procs += [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
        self.rss_peak = 0
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()

    def _cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def sample(self) -> None:
        rss = 0
        for proc in self.procs:
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        self.rss_peak = max(self.rss_peak, rss)

    async def run(self, interval: float = 0.1) -> None:
        while True:
            self.sample()
            await trio.sleep(interval)

    def result(self) -> dict[str, float]:
        if not self.procs:
            return {}
        self.sample()
        cpu = self._cpu() - self._cpu0
        seconds = time.monotonic() - self._t0
        return {
            "cpu_seconds": cpu,
            "cpu_cores": cpu / seconds if seconds > 0 else 0.0,
            "rss_peak_mib": self.rss_peak / 2**20,
            "processes": float(len(self.procs)),
        }


@dataclass
class _Link:
    pair: netns.NetnsPair | None

    @property
    def name(self) -> str:
        if self.pair is None:
            return "loopback"
        return f"veth pair ({self.pair.rate})" if self.pair.rate else "veth pair"

    def make_socket(self, family: int, type: int) -> Any:
        import socket

        return self.pair.socket(family, type) if self.pair else socket.socket(family, type)

    def make_server_socket(self, family: int, type: int) -> Any:
        """A socket on the head's side: its loopback (the API, the simulated BMCs) is there."""
        import socket

        if self.pair is None:
            return socket.socket(family, type)
        with self.pair.entered("server"):
            return socket.socket(family, type)

    @property
    def server_address(self) -> str:
        return self.pair.server_address if self.pair else "127.0.0.1"

    def relay(self) -> tuple[str, int]:
        if self.pair:
            return (self.pair.client_address, 67)
        # A per-process loopback address: two storms at once never share port 67.
        pid = os.getpid()
        return (f"127.77.{(pid >> 8) & 255}.{pid & 255 or 1}", 67)

    def node_network(self) -> str:
        return netns.NODE_NETWORK if self.pair else LOOPBACK_NODE_NETWORK

    def exec_prefix(self) -> list[str]:
        return self.pair.exec_prefix("server") if self.pair else []


def _start_process(cmd: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process that prints one line (its port(s)) when ready; returns it and the line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        _stop(proc)
        raise RuntimeError(f"{cmd[-1]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
    return proc, line


def link_counters(pair: netns.NetnsPair | None) -> dict[str, int]:
    """TCP retransmitted segments, retransmission timeouts and receive-side drops
    (``LINK_TCPEXT``) in each namespace of the pair, and packets dropped by the kernel's input backlog (all CPUs, host-wide: veth delivers
    through it). A stalled transfer with timeouts here was the network's doing (RTO back-off),
    not a server's. Empty on loopback (shared with everything else on the machine)."""
    if pair is None:
        return {}
    out: dict[str, int] = {}
    for side, ns in (("server", pair.server_ns), ("client", pair.client_ns)):
        try:
            text = subprocess.run(
                ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/netstat"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        fields = _proc_net_fields(text)
        out[f"{side} tcp retransmitted segments"] = fields.get(("Tcp", "RetransSegs"), 0)
        for name in LINK_TCPEXT:
            key = f"{side} tcp {name[3:] if name.startswith('TCP') else name}"
            out[key] = fields.get(("TcpExt", name), 0)
    try:
        rows = Path("/proc/net/softnet_stat").read_text().split("\n")
        out["backlog drops (host)"] = sum(int(r.split()[1], 16) for r in rows if r.strip())
    except (OSError, ValueError, IndexError):
        pass
    return out


def _proc_net_fields(text: str) -> dict[tuple[str, str], int]:
    """/proc/net/snmp and /proc/net/netstat: pairs of lines "Proto: names" / "Proto: values"."""
    out: dict[tuple[str, str], int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, keys = names.partition(":")
        vproto, _, vals = values.partition(":")
        if proto != vproto:
            continue
        for k, v in zip(keys.split(), vals.split(), strict=False):
            try:
                out[(proto, k)] = int(v)
            except ValueError:
                continue
    return out


def _final_counters(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Stop the head (SIGTERM) and read the counters it prints on the way out ({} if it does not)."""
    assert proc.stdout is not None
    if proc.poll() is None:
        proc.terminate()
    fd = proc.stdout.fileno()
    rest = b""
    deadline = time.monotonic() + 10
    try:
        # Until end of file (the head and every child that shares its stdout are gone), a line
        # with the counters, or 10 s: whichever comes first.
        while not (b"final_stats" in rest and rest.endswith(b"\n")) and len(rest) < MAX_FINAL_OUTPUT:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            data = os.read(fd, 65536)
            if not data:
                break
            rest += data
    except (OSError, ValueError):
        return {}
    finally:
        _stop(proc)  # waits (killing it after 10 s) and closes the pipe
    for line in rest.decode(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        final = doc.get("final_stats") if isinstance(doc, dict) else None
        if isinstance(final, dict):
            return final
    return {}


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate one process we started (by its PID), wait for it, close its pipe."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def head_overrides(link: _Link, state_dir: Path, extra: Sequence[str]) -> list[str]:
    """Head settings for a storm: every service on the link's server address; ports 0 on loopback."""
    addr = link.server_address
    # Standard ports inside a namespace (the relay answer goes to port 67 anyway); any free one on loopback.
    dhcp, tftp, http = ("67", "69", "8081") if link.pair else ("0", "0", "0")
    return [
        f"head.state_dir={state_dir}", f"head.advertise_address={addr}", f"head.name=storm-{os.getpid()}",
        f"dhcp.listen={addr}", f"dhcp.port={dhcp}", f"tftp.listen={addr}", f"tftp.port={tftp}",
        f"http.listen={addr}", f"http.port={http}", "api.listen=127.0.0.1", "api.port=0",
        *extra,
    ]  # fmt: skip


async def _measure_floor(
    link: _Link, workdir: Path, store: ImageStore, c: content_mod.StormContent,
    digests: FrameDigests, options: StormOptions,
) -> floor.FloorResult:  # fmt: skip
    stream = workdir / "floor-stream"
    with open(stream, "wb") as out:
        for chunk in c.manifest.chunks:
            path = store.chunk_path(chunk.id)
            assert path is not None
            out.write(path.read_bytes())
    cmd = [
        *link.exec_prefix(),
        sys.executable,
        "-m",
        "cwboot.sim.floor",
        str(stream),
        link.server_address,
    ]
    proc, line = _start_process(cmd, workdir / "floor.log")
    try:
        sources = [
            netns.node_address(i, link.node_network()) for i in range(options.floor_connections)
        ]
        samples = [
            await floor.measure(
                link.server_address, int(line), c.manifest, digests,
                connections=options.floor_connections, total_bytes=options.floor_bytes,
                sources=sources, make_socket=link.make_socket,
            )  # fmt: skip
            for _ in range(max(1, options.floor_samples))
        ]
        best = max(samples, key=lambda r: r.bytes_per_second)
        best.samples = [r.bytes_per_second for r in samples]
        return best
    finally:
        _stop(proc)
        stream.unlink()


def _report(
    options: StormOptions, link: _Link, swarm: SwarmResult, server: dict[str, float],
    fl: floor.FloorResult | None,
) -> StormReport:  # fmt: skip
    results: list[NodeResult] = swarm.nodes
    ok = [r for r in results if r.ok]
    phases = {
        name: percentiles([r.phases[name][1] - r.phases[name][0] for r in ok if name in r.phases])
        for name in PHASES
    }
    served = sum(sum(r.bytes.values()) for r in results)
    rootfs = sum(r.bytes.get("rootfs", 0) for r in results)
    wall = max((r.up for r in ok), default=0.0) if len(ok) == len(results) else swarm.wall
    retries: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r.retries.items():
            retries[k] = retries.get(k, 0) + v
        if r.error:
            key = r.error.split(":", 1)[0] + ": " + r.error.split(":", 1)[-1].strip()[:80]
            errors[key] = errors.get(key, 0) + 1
    floor_doc: dict[str, float] = {}
    if fl is not None and fl.bytes_per_second > 0:
        seconds = served / fl.bytes_per_second
        floor_doc = {
            "bytes_per_second": fl.bytes_per_second, "measured_bytes": float(fl.bytes),
            "measured_seconds": fl.seconds, "connections": float(fl.connections),
            "seconds": seconds, "wall_over_floor": wall / seconds if seconds else 0.0,
            "samples": float(len(fl.samples)), "slowest_sample_bytes_per_second": min(fl.samples or [0.0]),
        }  # fmt: skip
    settings = {
        "image": options.image, "kernel_mib": options.kernel_mib, "initramfs_mib": options.initramfs_mib,
        "rate": options.rate, "launch_rate": options.launch_rate, "head_settings": options.head_settings,
        "node": dataclasses.asdict(options.node), "cpus": os.cpu_count(),
        "dhcp_sent": swarm.dhcp_sent, "dhcp_received": swarm.dhcp_received, "relay_drops": swarm.relay_drops,
        "client_loop_lag": swarm.loop_lag,
        "http_connects": swarm.http.connects, "http_requests": swarm.http.requests,
    }  # fmt: skip
    return StormReport(
        target=options.target, link=link.name, nodes=len(results), up=len(ok),
        failures=len(results) - len(ok), wall=wall,
        boot=percentiles([r.up - r.started for r in ok]), phases=phases,
        up_times=sorted(r.up for r in ok), server=server, bytes_served=served, rootfs_bytes=rootfs,
        floor=floor_doc, waits=sum(r.waits for r in results), retries=retries, errors=errors,
        settings=settings, node_results=[r.to_dict() for r in results],
    )  # fmt: skip


async def _storm(
    options: StormOptions, link: _Link, targets: SwarmTargets, image_url: str, pids: list[int],
    fl: floor.FloorResult | None, digests: FrameDigests, first_index: int = 0,
    head_power: _HeadPower | None = None,
) -> StormReport:  # fmt: skip
    source = netns.node_address(0, link.node_network())
    m = await prove_image(image_url, digests, source=source, make_socket=link.make_socket)
    meter = ProcessMeter(pids)
    net_before = link_counters(link.pair)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meter.run)
        power_on = None
        if options.power == "ipmi":
            power_on = await nursery.start(_power_on_through_bmcs, options.nodes, first_index)
        elif head_power is not None:
            power_on = head_power.receive
            # Runs at the swarm's first checkpoint: after its clock started (t0).
            nursery.start_soon(head_power.power_on, options.node.deadline)
        t0 = trio.current_time()
        swarm = await run_swarm(targets, options.nodes, config=options.node, digests=digests,
                                launch_rate=options.launch_rate, first_index=first_index,
                                power_on=power_on)  # fmt: skip
        if head_power is not None:
            with trio.move_on_after(60):  # every node has finished: the answer is due
                await head_power.done.wait()
        nursery.cancel_scope.cancel()
    report = _report(options, link, swarm, meter.result(), fl)
    net_after = link_counters(link.pair)
    report.link_counters = {k: v - net_before.get(k, 0) for k, v in net_after.items()}
    report.settings["image_chunks"] = len(m.chunks)
    report.settings["image_compressed_bytes"] = m.compressed_size
    if head_power is not None:
        report.power = head_power.result(t0, swarm.nodes)
    return report


class _HeadPower:
    """``--power head-api``: a simulated BMC per node, powered on by the head under test.

    The BMCs listen on the head's loopback (127.0.0.1; inside the server
    namespace with --netns), node i's ``power_uri`` names BMC i, and one
    ``POST /api/v1/power/on {"nodes": "n[..]", "bootdev": "pxe"}`` with the
    head's admin token asks the head to power every node on: its IPMI workers
    log in, set boot device PXE (once), power on and log out, one session per
    node, within its ``[power]`` budget. A BMC's power-on hook starts its node
    (``receive``), so the head serves the first nodes' DHCP/TFTP/HTTP while it
    still powers on the rest.
    """

    def __init__(self, count: int, first_index: int = 0) -> None:
        from cwboot.sim.bmc import make_bmcs

        self.count = count
        self.first_index = first_index
        self.send, self.receive = trio.open_memory_channel[int](count)
        self.bmcs = make_bmcs(count, hook=self._hook)
        self.hosts: list[str] = []
        self.ports: list[int] = []
        # When each BMC acknowledged power-on (the trio clock), by node offset.
        self.on_at: dict[int, float] = {}
        # The head's API: address, port, admin token (set before power_on runs).
        self.api: tuple[str, int] = ("127.0.0.1", 0)
        self.token = ""
        self.make_socket: Any = None
        self.called = 0.0
        self.answered = 0.0
        self.answer: dict[str, Any] = {}
        self.head_stats: dict[str, Any] = {}
        self.error = ""
        self.done = trio.Event()

    def _hook(self, bmc: Any, action: str) -> None:
        if action not in ("on", "cycle", "reset"):
            return
        i = int(bmc.name[3:])
        if i in self.on_at:
            return
        self.on_at[i] = trio.current_time()
        try:
            self.send.send_nowait(i)
        except trio.ClosedResourceError:
            pass  # the head already answered (this node timed out there): counted as not started

    async def serve(
        self, make_socket: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the BMCs (on the head's loopback through ``make_socket``) until cancelled."""
        from cwboot.sim.bmc import BmcFarm, serve_bmcs

        async with trio.open_nursery() as nursery:
            farm: BmcFarm = await nursery.start(
                functools.partial(serve_bmcs, self.bmcs, "127.0.0.1", make_socket=make_socket)
            )
            self.hosts, self.ports = farm.hosts, farm.ports
            self.make_socket = make_socket
            task_status.started()

    def uris(self) -> list[str]:
        user = self.bmcs[0].options.user
        return [f"ipmi://{user}@{h}:{p}" for h, p in zip(self.hosts, self.ports, strict=True)]

    @property
    def password(self) -> str:
        return self.bmcs[0].options.password

    async def power_on(self, deadline: float) -> None:
        """The API call, then the head's power counters; ``send`` is closed once it answered."""
        conn = HttpConnection(*self.api, make_socket=self.make_socket)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        last = self.first_index + self.count - 1
        body = json.dumps({"nodes": f"n[{self.first_index}-{last}]", "bootdev": "pxe"}).encode()
        try:
            with trio.move_on_after(deadline) as scope:
                self.called = trio.current_time()
                response = await conn.request("POST", "/api/v1/power/on", body=body, headers=headers)
                self.answered = trio.current_time()
                if response.status != 200:
                    self.error = f"HTTP {response.status}: {response.body[:200].decode(errors='replace')}"
                else:
                    self.answer = json.loads(response.body)
                stats = await conn.request("GET", "/api/v1/stats", headers=headers)
                if stats.status == 200:
                    self.head_stats = json.loads(stats.body).get("services", {}).get("power", {})
            if scope.cancelled_caught and not self.error:
                self.error = f"no answer from the head's API in {deadline:g} s"
        except (HttpError, ValueError) as exc:
            self.error = f"power API: {exc}"
        finally:
            conn.close()
            self.send.close()
            self.done.set()

    def result(self, t0: float, nodes: Sequence[NodeResult]) -> dict[str, Any]:
        """The power figures for the report (seconds from the API call unless said)."""
        results: list[dict[str, Any]] = self.answer.get("results", [])
        ok = sum(1 for r in results if r.get("ok"))
        errors: dict[str, int] = {}
        for r in results:
            if not r.get("ok"):
                key = str(r.get("error", ""))[:80]
                errors[key] = errors.get(key, 0) + 1
        if self.error:
            errors[self.error[:200]] = self.count - len(results)
        last_on = max(self.on_at.values(), default=self.called)
        # On the storm's clock (node phases are seconds since t0).
        cut = last_on - t0
        served = sum(
            1 for n in nodes if n.phases and min(end for _, end in n.phases.values()) <= cut
        )
        farm = {
            "bmcs": len(self.bmcs),
            "sessions_opened": sum(b.stats.sessions_opened for b in self.bmcs),
            "sessions_closed": sum(b.stats.sessions_closed for b in self.bmcs),
            "sessions_open_now": sum(b.stats.active for b in self.bmcs),
            "peak_sessions_per_bmc": max((b.stats.peak_active for b in self.bmcs), default=0),
            "duplicates": sum(b.stats.duplicates for b in self.bmcs),
            "powered_on": sum(b.power_on for b in self.bmcs),
            "booted_pxe": sum(b.last_boot_device == "pxe" for b in self.bmcs),
        }
        return {
            "mode": "head-api",
            "nodes": self.count,
            "ok": ok,
            "failed": self.count - ok,
            "errors": errors,
            "api_seconds": self.answered - self.called if self.answered else 0.0,
            "first_on_seconds": min(self.on_at.values(), default=self.called) - self.called,
            "last_on_seconds": last_on - self.called,
            "api_call_at": self.called - t0,
            "slowest_node_seconds": max((float(r.get("elapsed", 0.0)) for r in results), default=0.0),
            "attempts": sum(int(r.get("attempts", 0)) for r in results),
            "nodes_served_before_last_on": served,
            "nodes_up_before_last_on": sum(1 for n in nodes if n.ok and n.up <= cut),
            "bmc": farm,
            "head": self.head_stats,
        }


async def _power_on_through_bmcs(
    count: int,
    first_index: int,
    *,
    task_status: trio.TaskStatus[trio.MemoryReceiveChannel[int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Simulated BMCs for nodes 0..count-1, powered on by cwboot's power service (one wave).

    Each BMC's power-on hook sends its node's index to the channel handed to
    ``task_status``; the swarm starts that node then. The power service reads
    ``config.power`` defaults (budget, retries); its results are not needed:
    a node that never powers on shows up as a failure of the storm.
    """
    from cwboot.config import PowerConfig
    from cwboot.control.power import PowerRequest, serve_power
    from cwboot.sim.bmc import make_bmcs, serve_bmcs

    send, receive = trio.open_memory_channel[int](count)

    def hook(bmc: Any, action: str) -> None:
        if action in ("on", "cycle", "reset"):
            send.send_nowait(int(bmc.name[3:]))

    bmcs = make_bmcs(count, hook=hook)
    async with trio.open_nursery() as nursery:
        farm = await nursery.start(serve_bmcs, bmcs, "127.0.0.1")
        opts = bmcs[0].options
        docs = {
            f"n{first_index + i}": {
                "name": f"n{first_index + i}", "power_uri": f"ipmi://{opts.user}@127.0.0.1:{farm.ports[i]}",
                "power_password": opts.password,
            }
            for i in range(count)
        }  # fmt: skip
        power = await nursery.start(serve_power, PowerConfig(), docs.get)
        task_status.started(receive)
        async with power.submit(list(docs), PowerRequest("on", bootdev="pxe")) as results:
            async for _ in results:
                pass
        await trio.sleep_forever()


async def run_storm(options: StormOptions) -> StormReport:
    """Set up link, content and target, measure the floor, run the storm; everything torn down after."""
    if options.target not in TARGETS:
        raise ValueError(f"target {options.target!r}: expected one of {', '.join(TARGETS)}")
    if options.target == "dnsmasq" and not options.netns:
        raise ValueError("the dnsmasq baseline needs --netns (dnsmasq does no DHCP on loopback)")
    if options.target == "running" and options.running is None:
        raise ValueError("target 'running' needs RunningTarget (ports and URLs)")
    if options.power not in POWER_MODES:
        raise ValueError(f"power {options.power!r}: expected one of {', '.join(map(repr, POWER_MODES))}")
    if options.power == "head-api" and options.target != "head":
        raise ValueError("power 'head-api' needs target 'head' (the harness enrols the BMCs in its store)")
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="cwboot-storm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pair = netns.create_pair(rate=options.rate) if options.netns else None
    link = _Link(pair)
    procs: list[subprocess.Popen[bytes]] = []
    stack: baseline.BaselineStack | None = None
    try:
        digests = FrameDigests()
        if options.target == "running":
            assert options.running is not None
            r = options.running
            relay = (r.relay[0] or link.relay()[0], r.relay[1])
            targets = SwarmTargets(r.dhcp, relay, r.tftp_port, node_network=link.node_network(),
                                   make_socket=link.make_socket)  # fmt: skip
            return await _storm(options, link, targets, f"{r.http_url}/images/{r.image}/{r.version}",
                                r.pids, None, digests)  # fmt: skip
        state = workdir / "state"
        overrides = head_overrides(link, state, options.head_settings)
        config = cwconfig.load(None, overrides)
        store = ImageStore.from_config(config)
        c = await trio.to_thread.run_sync(lambda: content_mod.prepare(
            store, workdir / "content", image=options.image,
            kernel_mib=options.kernel_mib, initramfs_mib=options.initramfs_mib))  # fmt: skip
        source_digests = digests
        fl = None
        if options.measure_floor:
            for chunk in c.manifest.chunks:
                path = store.chunk_path(chunk.id)
                assert path is not None
                source_digests.prove(chunk, path.read_bytes())
            fl = await _measure_floor(link, workdir, store, c, source_digests, options)
        digests = FrameDigests()  # the storm proves its frames from the target itself
        macs = [mac_for(i) for i in range(options.nodes)]
        if options.target == "dnsmasq":
            assert pair is not None
            stack = baseline.start(workdir / "baseline", pair, store, c, macs)
            targets = SwarmTargets((pair.server_address, 67), link.relay(), 69,
                                   node_network=link.node_network(), make_socket=link.make_socket)  # fmt: skip
            image_url = f"{stack.http_url}/images/{c.image}/{c.version}"
            return await _storm(options, link, targets, image_url, stack.pids, fl, digests)
        async with trio.open_nursery() as nursery:
            head_power = None
            if options.power == "head-api":
                head_power = _HeadPower(options.nodes)
                await nursery.start(head_power.serve, link.make_server_socket)
                # The head reads this file at start; the harness is its admin.
                token_file = admin_token_path(config)
                assert token_file is not None  # always a path for a whole Config
                head_power.token = ensure_token_file(token_file)
            await head_process.seed(
                config, c, options.nodes, power_uris=head_power.uris() if head_power else (),
                power_password=head_power.password if head_power else "",
            )  # fmt: skip
            cmd = [*link.exec_prefix(), sys.executable, "-m", "cwboot.sim.head_process", *overrides]
            proc, line = _start_process(cmd, workdir / "head.log")
            procs.append(proc)
            ports = json.loads(line)
            addr = link.server_address
            targets = SwarmTargets((addr, ports["dhcp"]), link.relay(), ports["tftp"],
                                   node_network=link.node_network(), make_socket=link.make_socket)  # fmt: skip
            image_url = f"http://{addr}:{ports['http']}/images/{c.image}/{c.version}"
            if head_power is not None:
                head_power.api = ("127.0.0.1", ports["api"])
            report = await _storm(options, link, targets, image_url, [proc.pid], fl, digests,
                                  head_power=head_power)  # fmt: skip
            nursery.cancel_scope.cancel()
        report.server_counters = await trio.to_thread.run_sync(_final_counters, proc)
        return report
    finally:
        for proc in procs:
            _stop(proc)
        if stack is not None:
            stack.stop()
        if pair is not None:
            netns.destroy_pair(pair)
        if not options.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def plot(reports: Sequence[StormReport], path: str | os.PathLike[str]) -> None:
    """PNG of nodes up over time, one curve per report (e.g. cwboot and the baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for report in reports:
        xs = [0.0, *report.up_times]
        ys = list(range(len(xs)))
        label = f"{report.target} ({report.up}/{report.nodes} up, {report.wall:.1f} s)"
        ax.step(xs, ys, where="post", label=label)
        if report.floor:
            ax.axvline(report.floor["seconds"], linestyle=":", color="grey")
    ax.set_xlabel("seconds since power-on")
    ax.set_ylabel("nodes up")
    title = (
        f"boot storm: {reports[0].nodes} nodes over {reports[0].link}" if reports else "boot storm"
    )
    ax.set_title(title + " (dotted: bandwidth floor)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


async def discover_image_url(http_url: str, mac: str) -> str:
    """The rootfs base URL a node's iPXE script names (``{head}/images/{name}/{version}``)."""
    conn = HttpConnection(*_host_port_of(http_url))
    try:
        script_url = f"{http_url}/boot/ipxe/{mac.replace(':', '-')}"
        response = await conn.request("GET", script_url.split(http_url, 1)[1])
        if response.status != 200:
            raise RuntimeError(
                f"{script_url}: HTTP {response.status} (is node {mac} known to the head?)"
            )
        boot = ipxe_script.follow(response.body.decode("utf-8", "replace"), script_url,
                                  ipxe_script.node_settings(mac))  # fmt: skip
        urls = ipxe_script.rootfs_urls(boot.cmdline)
        if not urls:
            raise RuntimeError(
                f"{script_url}: the script names no image (boot config without one?)"
            )
        return urls[0]
    finally:
        conn.close()


def _host_port_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


def storm_node_docs(
    count: int, *, first_index: int = 0, naming_pool: str = "default", boot_config: str = "default"
) -> list[dict[str, Any]]:
    """Node documents for ``Objects.create_many("node", ...)``: the MACs simulated nodes use."""
    return [
        {"index": i, "naming_pool": naming_pool, "mac": [mac_for(i)], "boot_config": boot_config}
        for i in range(first_index, first_index + count)
    ]


async def demo_storm(
    head_ports: Any, nodes: int, *, first_index: int = 0, node: NodeConfig | None = None
) -> StormReport:
    """Boot ``nodes`` simulated nodes through an already-running head on loopback.

    ``head_ports`` is what ``cwboot.head.run_head`` reported (``address`` and
    the ``dhcp``/``tftp``/``http`` ports). The head must know MACs
    ``mac_for(first_index)``.. (``storm_node_docs``) or enrol unknown MACs, and
    their boot config must name an image. DHCP goes through a relay bound on a
    127.77.x.y address, port 67 (the port servers answer relays on): needs root.
    Server CPU/RSS are not measured (the head shares this process).
    """
    ports = head_process.ports_of(head_ports)
    address = head_ports.address
    http_url = f"http://{address}:{ports['http']}"
    image_url = await discover_image_url(http_url, mac_for(first_index))
    link = _Link(None)
    targets = SwarmTargets((address, ports["dhcp"]), link.relay(), ports["tftp"],
                           node_network=link.node_network())  # fmt: skip
    options = StormOptions(
        nodes=nodes, target="running", measure_floor=False, node=node or NodeConfig()
    )
    return await _storm(options, link, targets, image_url, [], None, FrameDigests(), first_index)
