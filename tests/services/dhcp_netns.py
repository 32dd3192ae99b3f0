"""Two network namespaces joined by a veth pair, made (and removed) by the DHCP tests themselves.

    <prefix>s<pid>: veth <prefix>S<pid> 10.99.0.1/24   (the cwboot head)
    <prefix>c<pid>: veth <prefix>C<pid> 10.99.0.2/24   (clients: udhcpc, dhclient, perfdhcp)

The addresses exist only inside the namespaces. ``entered(side)`` switches the
calling thread into a namespace; a socket created there stays in it, so a
trio service started inside ``entered("server")`` serves the server side.
Every process started with ``run``/``spawn`` is recorded by PID and killed on
``close()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator

SERVER = "10.99.0.1"
CLIENT = "10.99.0.2"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetnsPair:
    def __init__(self, prefix: str = "cwd") -> None:
        tag = f"{os.getpid()}{next(_serial)}"
        self.server_ns, self.client_ns = f"{prefix}s{tag}", f"{prefix}c{tag}"
        self.server_if, self.client_if = f"{prefix}S{tag}", f"{prefix}C{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            _ip("netns", "add", self.server_ns)
            _ip("netns", "add", self.client_ns)
            _ip("link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if)
            for ns, ifname, addr in (
                (self.server_ns, self.server_if, SERVER),
                (self.client_ns, self.client_if, CLIENT),
            ):
                _ip("link", "set", ifname, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
                _ip("-n", ns, "link", "set", ifname, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns if side == "server" else self.client_ns]

    @contextlib.contextmanager
    def entered(self, side: str) -> Iterator[None]:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(
            f"/run/netns/{self.server_ns if side == 'server' else self.client_ns}", os.O_RDONLY
        )
        try:
            _setns(there)
            yield
        finally:
            _setns(here)
            os.close(here)
            os.close(there)

    def spawn(self, side: str, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*self.exec_prefix(side), *args], start_new_session=True, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def perfdhcp_macs(base: str, count: int) -> list[str]:
    """The MACs perfdhcp -b mac=BASE -R COUNT can use (Kea's TestControl::generateMacAddress).

    For a random r in [0, count): add r to the last octet (mod 256), and while
    r >= 256 shift it right by 8 and add it to the next octet to the left.
    """
    octets = bytes.fromhex(base.replace(":", ""))
    macs = set()
    for r in range(count):
        mac = bytearray(octets)
        i = 5
        while i >= 0:
            mac[i] = (mac[i] + r) & 0xFF
            if r < 256:
                break
            r >>= 8
            i -= 1
        macs.add(bytes(mac).hex(":"))
    return sorted(macs)
