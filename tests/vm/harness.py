"""Real firmware boots under QEMU, inside a network namespace the test creates.

What this module provides (nothing here imports cwboot, so the harness also
drives the dnsmasq + nginx baseline):

- ``fetch_kernel``: a Debian cloud kernel, downloaded with ``apt-get download``
  and unpacked with ``dpkg-deb -x`` into a cache directory (never installed on
  the host), so reruns are fast.
- ``build_rootfs``: a tiny real root filesystem (busybox-static) whose init
  reports ``up`` to the head (cwboot's status contract, docs/images.md), then
  powers the VM off.
- ``Netns``: a namespace with a bridge and tap devices on a private subnet;
  every process started in it is tracked by PID and killed on close.
- ``start_vm``: ``qemu-system-x86_64 -accel tcg -boot n`` on one tap, BIOS
  (iPXE NIC ROM from ipxe-qemu) or UEFI (OVMF's own PXE/HTTP client), serial
  console to a log file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
DEFAULT_CACHE = Path(os.environ.get("CWBOOT_TEST_CACHE", "/var/cache/cwboot-test"))

IPXE_ROM_DIR = Path("/usr/lib/ipxe/qemu")
IPXE_DIR = Path("/usr/lib/ipxe")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# Seconds a powered-off VM may still show up in the head's status (see wait_all).
EXIT_GRACE = 10.0

# Firmware paths a VM can take to reach iPXE / the kernel.
FIRMWARES = ("bios", "uefi-pxe", "uefi-http")


# -- kernel -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    # <root>/lib/modules/<version>
    modules: Path


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def kernel_package() -> str:
    """The versioned package behind ``linux-image-cloud-amd64`` (e.g. linux-image-6.1.0-56-cloud-amd64)."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE]).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeError(
        f"apt-cache depends {KERNEL_META_PACKAGE}: no linux-image dependency in {out!r}"
    )


def fetch_kernel(cache: Path = DEFAULT_CACHE) -> Kernel:
    """Download and unpack the Debian cloud kernel into ``cache`` (once; reruns reuse it).

    ``apt-cache`` reads the local package lists (scripts/test.sh runs apt-get update), so a
    rerun with the kernel already unpacked needs no network.
    """
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    root = cache / f"kernel-{version}"
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # A private folder per download: two runs at once never see each other's half files.
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            _run(["apt-get", "download", package], cwd=work)
            (deb,) = work.glob(f"{package}_*.deb")
            _run(["dpkg-deb", "-x", str(deb), str(work / "tree")])
            if not vmlinuz.exists():
                (work / "tree").rename(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Kernel(version, vmlinuz, root / "lib" / "modules" / version)


# -- the root filesystem the VMs switch into ---------------------------------------

# The image's /sbin/init: POSTs stage=up to /boot/status/<mac> on the first head that answers
# (cwboot.heads and cwboot.mac come from the kernel command line, as mount_rootfs reads them),
# then powers off. The user agent "cwtest-rootfs" tells its report apart in nginx's access log.
ROOTFS_INIT = """#!/bin/sh
export PATH=/bin
grep -q " /proc " /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q " /sys " /proc/mounts || mount -t sysfs sysfs /sys
grep -q " /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
arg() { tr ' ' '\\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
mac=$(arg cwboot.mac)
heads=$(arg cwboot.heads | tr ',' ' ')
root=$(grep ' / ' /proc/mounts | tail -n 1 | cut -d' ' -f3)
echo "cwtest-rootfs: real root ($root) is up on $mac after $(cut -d' ' -f1 /proc/uptime) s"
ok=0
for try in 1 2 3 4 5 6 7 8 9 10; do
    for head in $heads; do
        if timeout 5 wget -q -U cwtest-rootfs -O /dev/null --post-data "stage=up" "$head/boot/status/$mac"; then
            ok=1; echo "cwtest-rootfs: reported up to $head"; break 2
        fi
    done
    sleep 1
done
[ $ok = 1 ] || echo "cwtest-rootfs: could not report up to $heads"
sync
poweroff -f
"""
ROOTFS_APPLETS = (
    "sh", "mount", "umount", "mkdir", "cat", "sleep", "ip", "wget", "timeout", "poweroff", "echo",
    "grep", "sed", "ls", "tr", "cut", "tail", "sync", "ps", "df", "hostname",
)  # fmt: skip


def _busybox() -> Path:
    path = Path("/bin/busybox")
    if not path.exists():
        raise FileNotFoundError("busybox-static is not installed (scripts/apt-packages.txt)")
    return path


def build_rootfs(dest: Path) -> Path:
    """A small real root tree: busybox-static, /sbin/init reporting ``up``."""
    if dest.exists():
        shutil.rmtree(dest)
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var"):
        (dest / d).mkdir(parents=True)
    shutil.copy2(_busybox(), dest / "bin" / "busybox")
    for applet in sorted(set(ROOTFS_APPLETS)):
        (dest / "bin" / applet).symlink_to("busybox")
    init = dest / "sbin" / "init"
    init.write_text(ROOTFS_INIT)
    init.chmod(0o755)
    (dest / "etc" / "hostname").write_text("cwtest\n")
    return dest


# -- network namespace ----------------------------------------------------------------

_ns_counter = itertools.count()


class Netns:
    """A network namespace with a bridge ``br0`` (``head_ip``/24) and ``taps`` tap devices.

    Addresses are private and exist only inside the namespace. Processes started with
    ``popen`` run inside it and are killed by PID in ``close`` (also on failure).
    """

    def __init__(self, taps: int = 1, subnet: str = "10.231.0.0/24") -> None:
        self.name = f"cwbvm{os.getpid()}x{next(_ns_counter)}"
        self.network = ipaddress.IPv4Network(subnet)
        self.head_ip = str(self.network.network_address + 1)
        self.taps = [f"tap{i}" for i in range(taps)]
        self._procs: list[subprocess.Popen[bytes]] = []
        _run(["ip", "netns", "add", self.name])
        try:
            self.run("ip", "link", "set", "lo", "up")
            self.run(
                "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"
            )
            self.run("ip", "addr", "add", f"{self.head_ip}/{self.network.prefixlen}", "dev", "br0")
            self.run("ip", "link", "set", "br0", "up")
            for tap in self.taps:
                self.run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
                self.run("ip", "link", "set", tap, "master", "br0", "up")
            # Same link for every stack under test: an IPv6 "router" so iPXE skips its ~10 s wait.
            self.popen(
                [sys.executable, "-m", "tests.vm.router_advert", "br0", "3600"],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            self.close()
            raise

    def ip_for(self, index: int) -> str:
        return str(self.network.network_address + 100 + index)

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.name, *cmd])

    def popen(self, cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
        # `ip netns exec` execs the command, so the PID is the command's own.
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            kill(proc)
        self._procs.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill(proc: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    """Stop one process by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- VMs ----------------------------------------------------------------------------------


def mac_for(index: int) -> str:
    return f"52:54:00:c7:00:{index:02x}"


@dataclasses.dataclass
class Vm:
    mac: str
    firmware: str
    log: Path
    proc: subprocess.Popen[bytes]
    # time.monotonic() (timeouts) and time.time() (compared with the servers' report times).
    started: float
    started_wall: float

    def console(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        kill(self.proc)


def wait_all(
    vms: list[Vm],
    up_times: Callable[[], dict[str, float]],
    timeout: float,
    *,
    allow_dead: bool = False,
) -> dict[str, float]:
    """Seconds from each VM's start to its ``up``, polling ``up_times`` every 0.5 s.

    ``up_times`` maps the MAC of every node that reported ``up`` to the wall-clock time the
    server recorded the report (so how often this polls does not change the figure).
    Raises TimeoutError naming the VMs still down after ``timeout`` seconds, or RuntimeError
    when one of them exited (powered off) ``EXIT_GRACE`` seconds ago without being seen up:
    the head records a report after answering it, so the last one may land just after poweroff.
    With ``allow_dead`` such a VM is left out instead (the result lacks its MAC).
    """
    times: dict[str, float] = {}
    exited: dict[str, float] = {}
    deadline = min(vm.started for vm in vms) + timeout
    while True:
        up = up_times()
        now = time.monotonic()
        for vm in vms:
            if vm.mac in up and vm.mac not in times:
                times[vm.mac] = up[vm.mac] - vm.started_wall
        dead = {m for m, t in exited.items() if now - t > EXIT_GRACE and m not in times}
        if len(times) + len(dead) == len(vms) and (allow_dead or not dead):
            return times
        for vm in vms:
            if vm.mac in times or vm.proc.poll() is None:
                continue
            exited.setdefault(vm.mac, now)
            if now - exited[vm.mac] > EXIT_GRACE and not allow_dead:
                raise RuntimeError(
                    f"VM {vm.mac} ({vm.firmware}) exited (rc {vm.proc.returncode}) and never reported up; log {vm.log}"
                )
        if now > deadline:
            down = [f"{vm.mac} (log {vm.log})" for vm in vms if vm.mac not in times]
            raise TimeoutError(f"not up within {timeout:.0f} s: {', '.join(down)}")
        time.sleep(0.5)


def qemu_command(
    mac: str, tap: str, firmware: str, log: Path, vars_copy: Path | None, memory_mib: int = 256
) -> list[str]:
    """``qemu-system-x86_64`` for a diskless VM that network-boots from ``tap``."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware {firmware!r}: expected one of {FIRMWARES}")
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mib), "-smp", "1",
        "-nographic", "-nodefaults", "-no-user-config", "-no-reboot", "-boot", "n",
        "-serial", f"file:{log}", "-monitor", "none",
        "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
    ]  # fmt: skip
    if firmware == "bios":
        # The iPXE NIC ROM is the PXE client: its first DHCP already says user-class "iPXE".
        # QEMU's default ROM for virtio-net is ipxe-qemu's efi-virtio.rom; naming any romfile=
        # explicitly (even that one) leaves SeaBIOS without a network boot entry (QEMU 7.2).
        if not (IPXE_ROM_DIR / "efi-virtio.rom").exists():
            raise FileNotFoundError("ipxe-qemu is not installed (scripts/apt-packages.txt)")
        cmd += ["-device", f"virtio-net-pci,netdev=net0,mac={mac},bootindex=1"]
    else:
        # No option ROM: OVMF's own VirtioNetDxe + PXE/HTTP boot client fetch the loader.
        assert vars_copy is not None
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-device", f"virtio-net-pci,netdev=net0,mac={mac},romfile=,bootindex=1",
        ]  # fmt: skip
        if firmware == "uefi-http":
            # OVMF reads these switches from fw_cfg: no PXE boot options, so HTTPv4 comes first.
            cmd += [
                "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
            ]  # fmt: skip
    return cmd


def start_vm(netns: Netns, index: int, firmware: str, workdir: Path, memory_mib: int = 256) -> Vm:
    """Boot VM ``index`` (MAC ``mac_for(index)``, tap ``tap<index>``) inside ``netns``."""
    mac = mac_for(index)
    log = workdir / f"vm{index}-{firmware}.serial.log"
    log.write_text("")
    vars_copy = None
    if firmware != "bios":
        vars_copy = workdir / f"vm{index}-OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
    cmd = qemu_command(mac, netns.taps[index], firmware, log, vars_copy, memory_mib)
    started, started_wall = time.monotonic(), time.time()
    with (workdir / f"vm{index}.qemu.stderr").open("wb") as stderr:
        proc = netns.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    return Vm(mac, firmware, log, proc, started, started_wall)
