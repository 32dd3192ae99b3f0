"""Real firmware boots under QEMU, inside a network namespace the test creates.

What this module provides (nothing here imports cwboot, so the harness also
drives the dnsmasq + nginx baseline):

- ``fetch_kernel``: a Debian cloud kernel, downloaded with ``apt-get download``
  and unpacked with ``dpkg-deb -x`` into a cache directory (never installed on
  the host), so reruns are fast.
- ``build_rootfs``: a tiny real root filesystem (busybox-static) whose init
  reports ``up`` with the node's MAC to a URL taken from the kernel command
  line, then powers the VM off.
- ``build_test_initramfs``: a minimal initramfs (virtio-net modules, udhcpc,
  ``wget | zstd -d | tar x`` into tmpfs, switch_root) for the baseline.
- ``Netns``: a namespace with a bridge and tap devices on a private subnet;
  every process started in it is tracked by PID and killed on close.
- ``start_vm``: ``qemu-system-x86_64 -accel tcg -boot n`` on one tap, BIOS
  (iPXE NIC ROM from ipxe-qemu) or UEFI (OVMF's own PXE/HTTP client), serial
  console to a log file.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
DEFAULT_CACHE = Path(os.environ.get("CWBOOT_TEST_CACHE", "/var/cache/cwboot-test"))

IPXE_ROM_DIR = Path("/usr/lib/ipxe/qemu")
IPXE_DIR = Path("/usr/lib/ipxe")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# Modules the initramfs loads so the VM's virtio NIC appears (the cloud kernel has them as modules).
NIC_MODULES = ("virtio_pci", "virtio_net")

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
    """Download and unpack the Debian cloud kernel into ``cache`` (once; reruns reuse it)."""
    cache.mkdir(parents=True, exist_ok=True)
    existing = sorted(cache.glob("kernel-*/boot/vmlinuz-*"))
    package = None
    if not existing:
        package = kernel_package()
    else:
        try:
            package = kernel_package()
        except (subprocess.CalledProcessError, RuntimeError, FileNotFoundError):
            package = None  # offline: the cached kernel will do
    if package is not None:
        version = package.removeprefix("linux-image-")
        root = cache / f"kernel-{version}"
        vmlinuz = root / "boot" / f"vmlinuz-{version}"
        if not vmlinuz.exists():
            download = cache / "download"
            download.mkdir(exist_ok=True)
            _run(["apt-get", "download", package], cwd=download)
            (deb,) = download.glob(f"{package}_*.deb")
            partial = cache / f".partial-{version}"
            shutil.rmtree(partial, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(deb), str(partial)])
            partial.rename(root)
            deb.unlink()
        return Kernel(version, vmlinuz, root / "lib" / "modules" / version)
    vmlinuz = existing[-1]
    version = vmlinuz.name.removeprefix("vmlinuz-")
    return Kernel(version, vmlinuz, vmlinuz.parent.parent / "lib" / "modules" / version)


def _module_files(kernel: Kernel) -> dict[str, Path]:
    files = {}
    for ko in kernel.modules.rglob("*.ko"):
        files[ko.stem.replace("-", "_")] = ko
    return files


def _module_depends(ko: Path) -> list[str]:
    # .modinfo holds NUL-separated key=value strings; "depends=a,b" names the modules to load first.
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + len(b"\0depends=") : data.index(b"\0", at + 1)].decode()
    return [m.replace("-", "_") for m in value.split(",") if m]


def module_load_order(kernel: Kernel, wanted: Iterable[str] = NIC_MODULES) -> list[Path]:
    """``wanted`` and their dependencies, each after the modules it depends on."""
    files = _module_files(kernel)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in _module_depends(files[name]):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


# -- cpio (newc) archives -----------------------------------------------------------


class Cpio:
    """A deterministic newc cpio archive built in memory (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = itertools.count(1)

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [next(self._ino), mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(header + name.encode() + b"\0")
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def _busybox() -> Path:
    path = Path("/bin/busybox")
    if not path.exists():
        raise FileNotFoundError("busybox-static is not installed (scripts/apt-packages.txt)")
    return path


def _shared_libraries(binary: Path) -> list[Path]:
    out = _run(["ldd", str(binary)]).stdout
    libs = []
    for line in out.split("\n"):
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                libs.append(Path(p))
    return libs


BUSYBOX_APPLETS = (
    "sh", "mount", "umount", "mkdir", "cat", "sleep", "ip", "udhcpc", "wget", "tar", "insmod",
    "switch_root", "poweroff", "reboot", "echo", "grep", "sed", "ls", "tr", "cut", "date", "uptime",
)  # fmt: skip

UDHCPC_SCRIPT = """#!/bin/sh
# Configure the interface from busybox udhcpc's environment.
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route add default via "${router%% *}" dev "$interface"; fi
    ;;
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
esac
exit 0
"""

# The baseline's initramfs: one NIC, DHCP, the image stream unpacked into tmpfs.
TEST_INITRAMFS_INIT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
arg() { tr ' ' '\\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
fail() { echo "cwtest-initramfs: $*"; poweroff -f; }
for m in $(cat /modules.order); do insmod "/lib/modules/$m" || fail "insmod $m"; done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ]; do n=$((n + 1)); [ $n -gt 100 ] && fail "no eth0"; sleep 0.1; done
ip link set eth0 up
udhcpc -i eth0 -q -f -n -t 10 -T 1 -s /bin/udhcpc.script || fail "no DHCP lease"
image=$(arg cwtest.image)
[ -n "$image" ] || fail "no cwtest.image= on the command line"
mkdir -p /newroot
mount -t tmpfs -o size=64m rootfs /newroot
echo "cwtest-initramfs: fetching $image"
wget -q -O - "$image" | zstd -q -d | tar -x -C /newroot || fail "image download/unpack failed"
umount /sys /proc
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
"""


def build_test_initramfs(kernel: Kernel, out: Path) -> Path:
    """A gzip'd newc initramfs for the baseline boot (cwboot builds its own)."""
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "lib64", "newroot", "tmp"):
        cpio.dir(d)
    cpio.file("bin/busybox", _busybox().read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("bin/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    zstd = Path(shutil.which("zstd") or "/usr/bin/zstd")
    cpio.file("bin/zstd", zstd.read_bytes(), 0o755)
    done: set[str] = set()
    for lib in _shared_libraries(zstd):
        name = str(lib).lstrip("/")
        for parent in reversed(Path(name).parents):
            if str(parent) != "." and str(parent) not in done:
                done.add(str(parent))
                cpio.dir(str(parent))
        cpio.file(name, lib.resolve().read_bytes(), 0o755)
    order = module_load_order(kernel)
    for ko in order:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes())
    cpio.file("modules.order", "".join(f"{ko.name}\n" for ko in order).encode())
    cpio.file("init", TEST_INITRAMFS_INIT.encode(), 0o755)
    out.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    return out


# -- the root filesystem the VMs switch into ---------------------------------------

# Reports "up" with the MAC of the interface the node booted from, then powers off. The URL comes
# from the kernel command line (cwtest.report=...); "@MAC@" in it is replaced by the MAC.
ROOTFS_INIT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q " /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
arg() { tr ' ' '\\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
mac=$(cat /sys/class/net/eth0/address)
echo "cwtest-rootfs: real root is up on $mac after $(cut -d' ' -f1 /proc/uptime) s"
url=$(arg cwtest.report | sed "s/@MAC@/$mac/g")
ok=0
for try in 1 2 3 4 5 6 7 8 9 10; do
    if wget -q -O /dev/null --post-data "{\\"mac\\": \\"$mac\\", \\"stage\\": \\"up\\"}" \\
            --header "Content-Type: application/json" "$url"; then
        ok=1; break
    fi
    sleep 1
done
if [ $ok = 1 ]; then echo "cwtest-rootfs: reported up to $url"; else echo "cwtest-rootfs: report to $url FAILED"; fi
sync
poweroff -f
"""

ROOTFS_APPLETS = BUSYBOX_APPLETS + ("tail", "sync", "cut", "hostname", "ps", "df")

# A file the test can look for to prove the VM ran this root filesystem, not something else.
ROOTFS_MARKER = "etc/cwboot-test-rootfs"


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
    (dest / ROOTFS_MARKER).write_text("cwboot VM test root filesystem\n")
    (dest / "etc" / "hostname").write_text("cwtest\n")
    return dest


def rootfs_tar_zst(rootfs: Path, out: Path) -> Path:
    """The root tree as one zstd stream of a tar archive (what the baseline serves)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    out.write_bytes(
        subprocess.run(
            ["zstd", "-q", "-c", "-3"], input=buf.getvalue(), capture_output=True, check=True
        ).stdout
    )
    return out


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
    started: float

    def console(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, needle: str, timeout: float) -> float:
        """Seconds from VM start until ``needle`` shows on the serial console; TimeoutError if not."""
        return wait_until(
            lambda: needle in self.console(), timeout, self, f"{needle!r} on the console"
        )

    def stop(self) -> None:
        kill(self.proc)


def wait_until(done: Callable[[], bool], timeout: float, vm: Vm, what: str) -> float:
    """Poll ``done`` every 0.2 s; seconds since ``vm`` started when it holds."""
    deadline = vm.started + timeout
    while True:
        if done():
            return time.monotonic() - vm.started
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"VM {vm.mac} ({vm.firmware}): no {what} within {timeout:.0f} s; log {vm.log}"
            )
        if vm.proc.poll() is not None and not done():
            raise RuntimeError(
                f"VM {vm.mac} ({vm.firmware}) exited (rc {vm.proc.returncode}) before {what}; log {vm.log}"
            )
        time.sleep(0.2)


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
    started = time.monotonic()
    proc = netns.popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"vm{index}.qemu.stderr").open("wb"),
    )
    return Vm(mac, firmware, log, proc, started)
