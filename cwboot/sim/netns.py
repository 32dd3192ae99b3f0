"""A pair of network namespaces joined by a veth pair: the "head link" of a simulated cluster.

Layout (names carry a prefix and the creating PID, so parallel runs never meet):

    <prefix>s<pid> (server side)              <prefix>c<pid> (client side: the nodes)
      veth <prefix>S<pid>  10.77.0.254/16  <->  veth <prefix>C<pid>  10.77.0.1/16
      lo up                                      lo up; `local 10.78.0.0/16 dev lo`
      route 10.78.0.0/16 via 10.77.0.1

The client side owns the whole 10.78.0.0/16 through an AnyIP local route, so
simulated node ``i`` can use its own source address (``node_address(i)``)
without configuring thousands of addresses. Both addresses exist only inside
the namespaces. ``tc`` shapes the server's egress (head -> nodes, the
direction a boot storm fills) with a token bucket when ``rate`` is given.

Processes run in a namespace with ``ip netns exec`` (which execs, so the PID
is the server's own). This process itself stays in its namespace; sockets are
created inside the client namespace by switching the calling thread there for
the duration of one ``socket()`` call (``setns`` is per thread on Linux) —
see :meth:`NetnsPair.socket`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
SERVER_ADDRESS = "10.77.0.254"
CLIENT_ADDRESS = "10.77.0.1"
LINK_NETWORK = "10.77.0.0/16"
NODE_NETWORK = "10.78.0.0/16"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """Creating or configuring a namespace failed (not root, iproute2 missing...)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class NetnsPair:
    server_ns: str
    client_ns: str
    server_if: str
    client_if: str
    # Token-bucket rate on the server's egress ("1gbit", "10gbit"), "" for none.
    rate: str = ""

    server_address: str = SERVER_ADDRESS
    client_address: str = CLIENT_ADDRESS

    def exec_prefix(self, side: str = "server") -> list[str]:
        """Command prefix that runs a program inside one side's namespace."""
        return ["ip", "netns", "exec", self.server_ns if side == "server" else self.client_ns]

    @contextlib.contextmanager
    def entered(self, side: str = "client") -> Iterator[None]:
        """Switch the calling thread into a namespace for the block (no awaits inside!)."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(
            f"/run/netns/{self.client_ns if side == 'client' else self.server_ns}", os.O_RDONLY
        )
        try:
            _setns(there)
            try:
                yield
            finally:
                _setns(here)
        finally:
            os.close(here)
            os.close(there)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A stdlib socket that lives in the client namespace."""
        with self.entered("client"):
            return socket.socket(family, type)

    def interface_bytes(self) -> tuple[int, int]:
        """(bytes the server sent, bytes it received) on its veth, from the kernel's counters."""
        with self.entered("server"):
            base = f"/sys/class/net/{self.server_if}/statistics/"
            with open(base + "tx_bytes") as tx, open(base + "rx_bytes") as rx:
                return int(tx.read()), int(rx.read())


def node_address(index: int, network: str = NODE_NETWORK) -> str:
    """Source address of simulated node ``index`` (skips the network address)."""
    net = ipaddress.IPv4Network(network)
    if index + 1 >= net.num_addresses - 1:
        raise ValueError(f"node index {index} does not fit in {network}")
    return str(net.network_address + 1 + index)


def create_pair(prefix: str = "cwb8", rate: str = "") -> NetnsPair:
    """Create and configure the pair; tear it down with :func:`destroy_pair` (even on failure)."""
    if os.geteuid() != 0:
        raise NetnsError("network namespaces need root")
    pid = os.getpid()
    pair = NetnsPair(
        f"{prefix}s{pid}", f"{prefix}c{pid}", f"{prefix}S{pid}", f"{prefix}C{pid}", rate
    )
    try:
        _ip("netns", "add", pair.server_ns)
        _ip("netns", "add", pair.client_ns)
        _ip("link", "add", pair.server_if, "netns", pair.server_ns, "type", "veth",
            "peer", "name", pair.client_if, "netns", pair.client_ns)  # fmt: skip
        for ns, ifname, addr in (
            (pair.server_ns, pair.server_if, SERVER_ADDRESS),
            (pair.client_ns, pair.client_if, CLIENT_ADDRESS),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/16", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
        _ip("-n", pair.client_ns, "route", "add", "local", NODE_NETWORK, "dev", "lo")
        _ip("-n", pair.server_ns, "route", "add", NODE_NETWORK, "via", CLIENT_ADDRESS)
        if rate:
            # Burst: ~1 ms at the rate, at least 64 KiB so one GSO segment always passes.
            bits = _rate_bits(rate)
            burst = max(64 * 1024, bits // 8 // 1000)
            result = subprocess.run(
                ["ip", "netns", "exec", pair.server_ns, "tc", "qdisc", "replace", "dev",
                 pair.server_if, "root", "tbf", "rate", rate, "burst", str(burst), "latency", "20ms"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if result.returncode != 0:
                raise NetnsError(f"tc: {result.stderr.strip()}")
    except BaseException:
        destroy_pair(pair)
        raise
    return pair


def _rate_bits(rate: str) -> int:
    units = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "bit": 1}
    for suffix, factor in units.items():
        if rate.endswith(suffix):
            return int(float(rate[: -len(suffix)]) * factor)
    raise NetnsError(f"rate {rate!r}: expected a number with kbit/mbit/gbit")


def destroy_pair(pair: NetnsPair) -> None:
    """Delete both namespaces (the veth pair goes with them). Never raises."""
    for ns in (pair.server_ns, pair.client_ns):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
