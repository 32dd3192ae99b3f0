"""A server/client pair of network namespaces for the TFTP interop tests and bench/bench_tftp.py.

    <prefix>s<tag>: veth <prefix>S<tag> 10.98.0.1/24   (TFTP servers: cwboot, in.tftpd, dnsmasq)
    <prefix>c<tag>: veth <prefix>C<tag> 10.98.0.2/24   (clients: tftp-hpa, atftp, curl, busybox)

The addresses exist only inside the namespaces. ``impair(loss_percent=3, delay_ms=2)``
shapes both directions of the link: loss and delay with ``tc netem`` where the kernel
has sch_netem, otherwise loss only (an nftables drop; no delay can be added), and it
returns a text saying which. Every process started with ``spawn`` or
``run`` is recorded by PID and killed (its whole session) on ``close()``,
which also deletes both namespaces (and with them the veth pair).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from typing import Any

SERVER = "10.98.0.1"
CLIENT = "10.98.0.2"
_serial = itertools.count()


_netem: list[bool] = []


def _has_netem(ns: str) -> bool:
    """Whether this kernel has sch_netem (Firecracker guests often lack it); probed on ns's lo."""
    if not _netem:
        exec_ns = ["ip", "netns", "exec", ns, "tc", "qdisc"]
        probe = subprocess.run(
            [*exec_ns, "add", "dev", "lo", "root", "netem", "delay", "0ms"],
            capture_output=True,
            timeout=30,
        )
        subprocess.run([*exec_ns, "del", "dev", "lo", "root"], capture_output=True, timeout=30)
        _netem.append(probe.returncode == 0)
    return _netem[0]


def _run(*args: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


class TftpNetns:
    def __init__(self, prefix: str = "cwt") -> None:
        tag = f"{os.getpid()}{next(_serial)}"
        self.server_ns, self.client_ns = f"{prefix}s{tag}", f"{prefix}c{tag}"
        self.server_if, self.client_if = f"{prefix}S{tag}", f"{prefix}C{tag}"
        self.procs: list[subprocess.Popen[Any]] = []
        try:
            _run("ip", "netns", "add", self.server_ns)
            _run("ip", "netns", "add", self.client_ns)
            _run(
                "ip", "link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if
            )
            for ns, ifname, addr in (
                (self.server_ns, self.server_if, SERVER),
                (self.client_ns, self.client_if, CLIENT),
            ):
                _run("ip", "link", "set", ifname, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
                _run("ip", "-n", ns, "link", "set", ifname, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TftpNetns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def impair(
        self, loss_percent: float = 0.0, delay_ms: float = 0.0, *, toward: str = "both"
    ) -> str:
        """Make both directions of the link lossy/slow; returns what was applied.

        ``tc netem`` when the kernel has sch_netem; otherwise (this VM's kernel)
        loss is done with an nftables ``numgen random`` drop on each end's
        ingress and delay cannot be added, which the returned text says.
        ``toward`` = "client" or "server" makes only packets toward that side lossy.
        """
        for ns, ifname in ((self.server_ns, self.server_if), (self.client_ns, self.client_if)):
            exec_ns = ["ip", "netns", "exec", ns]
            subprocess.run(
                [*exec_ns, "tc", "qdisc", "del", "dev", ifname, "root"],
                capture_output=True,
                timeout=30,
            )
            subprocess.run(
                [*exec_ns, "nft", "delete", "table", "netdev", "cwtloss"],
                capture_output=True,
                timeout=30,
            )
        if not loss_percent and not delay_ms:
            return "clean"
        if _has_netem(self.server_ns):
            spec = f"netem loss {loss_percent}% delay {delay_ms}ms"
            # netem shapes egress: the server's end carries packets toward the client.
            for toward_side, ns, ifname in (
                ("client", self.server_ns, self.server_if),
                ("server", self.client_ns, self.client_if),
            ):
                if toward not in ("both", toward_side):
                    continue
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    ifname,
                    "root",
                    *spec.split(),
                )
            return f"tc {spec}"
        per_mille = round(loss_percent * 10)
        for side, ns, ifname in (
            ("server", self.server_ns, self.server_if),
            ("client", self.client_ns, self.client_if),
        ):
            if not per_mille or toward not in ("both", side):
                continue
            rules = (
                "table netdev cwtloss { chain ingress { type filter hook ingress device "
                f'"{ifname}" priority 0; numgen random mod 1000 < {per_mille} drop; }}; }}\n'
            )
            result = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=rules,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if result.returncode:
                raise RuntimeError(f"nft in {ns}: {result.stderr.strip()}")
        return f"nft loss {loss_percent}% toward {toward} (no sch_netem: delay {delay_ms}ms not applied)"

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns if side == "server" else self.client_ns]

    def spawn(self, side: str, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen([*self.exec_prefix(side), *args], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def run(
        self, side: str, args: list[str], timeout: float, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed by PID after ``timeout`` seconds)."""
        proc = self.spawn(
            side, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            return subprocess.CompletedProcess(
                proc.args, -9, out, err + f"\n(killed after {timeout}s)"
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
