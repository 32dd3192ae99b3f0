"""Run many simulated nodes at once against one set of servers.

``run_swarm`` opens the shared DHCP relay socket, proves the image's frames
once (``prove_image``: the reference fetch every node's chunks are then
compared with), and boots ``count`` nodes concurrently — all at once, or
``launch_rate`` per second (a power-on wave). Node ``i`` has MAC
``mac_for(first_index + i)`` and its own source address ``source_for(i)``
(127.78.0.0/16 on loopback, 10.78.0.0/16 in a namespace pair), so per-peer
limits on the server see distinct peers, as on a real cluster.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from cwboot.protocol import manifest as manifest_mod
from cwboot.sim.dhcp_client import RelaySocket
from cwboot.sim.http_client import ConnStats, HttpConnection, HttpError, SocketFactory
from cwboot.sim.netns import node_address
from cwboot.sim.node import NodeConfig, NodeResult, SimNode, SwarmContext, mac_for
from cwboot.sim.rootfs import FrameDigests

LOOPBACK_NODE_NETWORK = "127.78.0.0/16"
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; not exported by the socket module


@dataclass
class SwarmTargets:
    """Where the servers are, as the simulated nodes see them."""

    # DHCP server address and port the relay forwards to.
    dhcp: tuple[str, int]
    # The relay's own address (giaddr) and the port servers answer relays on.
    relay: tuple[str, int]
    # TFTP port on the next-server the DHCP answer names.
    tftp_port: int = 69
    tftp_host: str = ""
    node_network: str = LOOPBACK_NODE_NETWORK
    make_socket: SocketFactory = socket.socket


@dataclass
class SwarmResult:
    nodes: list[NodeResult]
    # Seconds from the first power-on to the last node up (or failed).
    wall: float
    http: ConnStats
    relay_drops: dict[str, int] = field(default_factory=dict)
    dhcp_sent: int = 0
    dhcp_received: int = 0
    # How late the swarm's own event loop ran a 10 ms timer (p50/p99/max seconds): when
    # this grows, the simulator, not the server, is what the storm measures.
    loop_lag: dict[str, float] = field(default_factory=dict)


async def prove_image(
    base_url: str,
    digests: FrameDigests,
    *,
    source: str = "",
    make_socket: SocketFactory = socket.socket,
) -> manifest_mod.Manifest:
    """Fetch ``{base_url}/manifest`` and every chunk once; decode and prove each (the reference fetch)."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = HttpConnection(
        parts.hostname or "", parts.port or 80, source=source, make_socket=make_socket
    )
    try:
        response = await conn.request("GET", f"{parts.path}/manifest")
        if response.status != 200:
            raise HttpError(f"manifest: HTTP {response.status}")
        m = manifest_mod.parse_untrusted(response.body)
        for chunk in m.chunks:
            if chunk.id in digests.digests:
                continue
            for _ in range(100):
                response = await conn.request("GET", f"/chunks/{chunk.id}")
                if response.status != 503:
                    break
                await trio.sleep(0.2)
            if response.status != 200:
                raise HttpError(f"chunk {chunk.id}: HTTP {response.status}")
            digests.prove(chunk, response.body)
        return m
    finally:
        conn.close()


async def run_swarm(
    targets: SwarmTargets,
    count: int,
    *,
    config: NodeConfig | None = None,
    digests: FrameDigests | None = None,
    first_index: int = 0,
    launch_rate: float = 0.0,
    on_up: Callable[[NodeResult], None] | None = None,
    seed: int = 8,
    power_on: trio.MemoryReceiveChannel[int] | None = None,
) -> SwarmResult:
    """Boot ``count`` simulated nodes concurrently; returns when every one is up or has failed.

    With ``power_on``, node ``i`` (0 <= i < count) starts only when ``i`` arrives
    on the channel (a simulated BMC's power-on hook sends it); otherwise all
    start at once, or ``launch_rate`` per second.
    """
    cfg = config or NodeConfig()
    raw = targets.make_socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # root may exceed net.core.rmem_max: a storm's replies arrive in one burst
        raw.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 * 1024 * 1024)
    except PermissionError:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    results: list[NodeResult] = []
    with raw:
        raw.bind(targets.relay)
        relay = RelaySocket(raw, targets.relay[0], targets.dhcp)
        ctx = SwarmContext(
            relay=relay, digests=digests or FrameDigests(), config=cfg, t0=trio.current_time(),
            tftp_port=targets.tftp_port, tftp_host=targets.tftp_host,
            make_socket=targets.make_socket, rng=random.Random(seed),
        )  # fmt: skip

        async def one(i: int) -> None:
            node = SimNode(first_index + i, mac_for(first_index + i),
                           node_address(i, targets.node_network), ctx)  # fmt: skip
            result = await node.boot()
            results.append(result)
            if on_up is not None:
                on_up(result)

        lags: list[float] = []

        async def lag_monitor() -> None:
            while True:
                before = trio.current_time()
                await trio.sleep(0.01)
                lags.append(trio.current_time() - before - 0.01)

        async with trio.open_nursery() as outer:
            outer.start_soon(relay.run)
            outer.start_soon(lag_monitor)
            async with trio.open_nursery() as nodes:
                if power_on is not None:
                    started: set[int] = set()
                    with trio.move_on_after(cfg.deadline):
                        async for i in power_on:
                            if 0 <= i < count and i not in started:
                                started.add(i)
                                nodes.start_soon(one, i)
                            if len(started) == count:
                                break
                    for i in set(range(count)) - started:
                        index = first_index + i
                        results.append(NodeResult(index, mac_for(index), error="never powered on"))
                for i in range(count) if power_on is None else ():
                    nodes.start_soon(one, i)
                    if launch_rate > 0:
                        await trio.sleep(1.0 / launch_rate)
            wall = trio.current_time() - ctx.t0
            outer.cancel_scope.cancel()
    results.sort(key=lambda r: r.index)
    lags.sort()
    lag = (
        {"p50": lags[len(lags) // 2], "p99": lags[int(len(lags) * 0.99)], "max": lags[-1]}
        if lags
        else {}
    )
    return SwarmResult(
        results, wall, ctx.http_stats, dict(relay.drops), relay.sent, relay.received, lag
    )
