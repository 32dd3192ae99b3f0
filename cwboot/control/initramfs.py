"""Build cwboot's initramfs from distribution packages.

Contents (newc cpio, gzip by default, ``zstd`` on request — Debian kernels take both):

* ``/bin/busybox`` — the static busybox (Debian ``busybox-static``; its applets
  are linked at boot by ``/init``): sh, wget, tar, udhcpc, switch_root...
* ``/usr/bin/zstd`` and ``/usr/bin/xxhsum`` — Debian's ``zstd`` and ``xxhash``
  binaries with the shared libraries ``ldd`` names and the dynamic loader
  (busybox has no zstd and no xxh3; there is no static zstd package in Debian).
* kernel modules for the NICs and filesystems mount_rootfs needs (default
  ``DEFAULT_MODULES``) and everything they depend on, read from a kernel's
  ``lib/modules/<release>`` tree (e.g. an unpacked Debian ``linux-image`` .deb,
  see ``fetch_debian_kernel``); ``/lib/modules/load-order`` lists them in
  dependency order for ``/init`` to insmod (no depmod needed at build time).
* ``/init``, ``/bin/mount_rootfs`` and the udhcpc hook from ``cwboot/data``.

The archive is deterministic: entries sorted, owner root, mtime 0.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import zstandard

DEFAULT_MODULES = ("virtio_pci", "virtio_net", "e1000", "e1000e", "overlay")
# NIC drivers a kernel may simply not ship (Debian's cloud kernel has no e1000): skipped when absent.
OPTIONAL_MODULES = frozenset({"e1000", "e1000e"})
DEFAULT_BINARIES = ("/usr/bin/zstd", "/usr/bin/xxhsum")
DEFAULT_BUSYBOX = Path("/bin/busybox")


class InitramfsError(Exception):
    """The initramfs cannot be built; the message says what is missing."""


@dataclass
class InitramfsInfo:
    path: Path
    size: int
    modules: list[str] = field(default_factory=list)
    files: int = 0


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>
    release: str


class _Cpio:
    """newc cpio writer (the format the kernel unpacks: Documentation/driver-api/early-userspace)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}  # path -> (mode, data or link target)

    def dir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), (0o040755, b""))

    def file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        self.dir(os.path.dirname(path.strip("/")) or ".")
        self.entries[path.strip("/")] = (0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.dir(os.path.dirname(path.strip("/")) or ".")
        self.entries[path.strip("/")] = (0o120777, target.encode())

    def render(self) -> bytes:
        out = io.BytesIO()
        self.entries.pop(".", None)
        for ino, (name, (mode, data)) in enumerate(sorted(self.entries.items()), start=1):
            _cpio_entry(out, name, mode, data, ino)
        _cpio_entry(out, "TRAILER!!!", 0, b"", 0)
        return out.getvalue()


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes, ino: int) -> None:
    raw_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw_name), 0)
    out.write(b"070701" + b"".join(f"{v:08x}".encode() for v in fields))
    out.write(raw_name)
    out.write(b"\0" * (-(110 + len(raw_name)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def _shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries (and loader) a dynamic binary needs, from ldd."""
    try:
        text = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        raise InitramfsError("ldd not found (Debian package libc-bin)") from None
    if "not a dynamic executable" in text:
        return []
    return sorted(set(re.findall(r"(/\S+)\s+\(0x", text)))


def _module_index(modules_dir: Path) -> dict[str, Path]:
    index = {}
    for p in (modules_dir / "kernel").rglob("*.ko*"):
        index[p.name.split(".ko")[0].replace("-", "_")] = p
    return index


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    return data


def _module_deps(data: bytes) -> list[str]:
    m = re.search(rb"\0depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def resolve_modules(
    modules_dir: Path, wanted: Sequence[str], optional: frozenset[str] = OPTIONAL_MODULES
) -> list[tuple[str, bytes]]:
    """Wanted modules + their dependencies, in load order; builtin ones are skipped.

    A wanted module missing from the kernel is an error, unless it is in ``optional``.
    """
    index = _module_index(modules_dir)
    builtin_file = modules_dir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {
            Path(line).name.split(".ko")[0].replace("-", "_")
            for line in builtin_file.read_text().split()
        }
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise InitramfsError(f"kernel module {name} not found under {modules_dir}")
        data = _read_module(index[name])
        for dep in _module_deps(data):
            visit(dep)
        order.append((name, data))

    for w in wanted:
        if w.replace("-", "_") in optional and w.replace("-", "_") not in index:
            continue
        visit(w)
    return order


def build_initramfs(
    out: str | os.PathLike[str],
    *,
    kernel_modules: str | os.PathLike[str] | None = None,
    modules: Sequence[str] = DEFAULT_MODULES,
    busybox: str | os.PathLike[str] = DEFAULT_BUSYBOX,
    binaries: Sequence[str] = DEFAULT_BINARIES,
    compression: str = "gzip",
) -> InitramfsInfo:
    """Write the initramfs to ``out``.

    ``kernel_modules`` is a ``lib/modules/<release>`` folder; without it the
    initramfs carries no modules (fine for kernels with the drivers built in).
    """
    cpio = _Cpio()
    bb = Path(busybox)
    if not bb.exists():
        raise InitramfsError(f"{bb} not found: install Debian's busybox-static")
    if _shared_libraries(str(bb)):
        raise InitramfsError(f"{bb} is not static: install busybox-static")
    cpio.file("bin/busybox", bb.read_bytes())
    cpio.symlink("bin/sh", "busybox")
    for binary in binaries:
        if not Path(binary).exists():
            raise InitramfsError(f"{binary} not found (Debian packages zstd, xxhash)")
        cpio.file(f"usr/bin/{Path(binary).name}", Path(binary).read_bytes())
        for lib in _shared_libraries(binary):
            cpio.file(lib.lstrip("/"), Path(lib).resolve().read_bytes())
    data = resources.files("cwboot") / "data"
    cpio.file("init", (data / "init").read_bytes())
    cpio.file("bin/mount_rootfs", (data / "mount_rootfs").read_bytes())
    cpio.file("usr/share/udhcpc/default.script", (data / "udhcpc.script").read_bytes())
    for d in ("proc", "sys", "dev", "run", "tmp", "newroot", "etc", "sbin"):
        cpio.dir(d)
    loaded: list[str] = []
    if kernel_modules is not None:
        mods = resolve_modules(Path(kernel_modules), modules)
        for name, blob in mods:
            cpio.file(f"lib/modules/{name}.ko", blob, 0o644)
            loaded.append(name)
        cpio.file("lib/modules/load-order", "".join(f"{n}.ko\n" for n in loaded).encode(), 0o644)
    raw = cpio.render()
    if compression == "gzip":
        packed = gzip.compress(raw, compresslevel=9, mtime=0)
    elif compression == "zstd":
        packed = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(raw)
    else:
        raise InitramfsError(f"compression {compression!r}: expected gzip or zstd")
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(packed)
    os.replace(tmp, path)
    return InitramfsInfo(path, len(packed), loaded, len(cpio.entries))


def fetch_debian_kernel(
    cache_dir: str | os.PathLike[str], package: str = "linux-image-amd64"
) -> Kernel:
    """``apt-get download`` a Debian kernel package (following the metapackage) and unpack it.

    Returns the vmlinuz and its ``lib/modules/<release>`` folder, cached in ``cache_dir``.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    deps = subprocess.run(
        ["apt-cache", "depends", package], capture_output=True, text=True, check=False
    ).stdout
    real = re.findall(r"Depends: (linux-image-\S+)", deps)
    name = real[0] if real else package
    root = cache / name
    if not (root / "boot").is_dir():
        debs = list(cache.glob(f"{name}_*.deb"))
        if not debs:
            r = subprocess.run(
                ["apt-get", "download", name], cwd=cache, capture_output=True, text=True
            )
            debs = list(cache.glob(f"{name}_*.deb"))
            if not debs:
                raise InitramfsError(f"apt-get download {name} failed: {r.stderr.strip()}")
        tmp = cache / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True)
        os.replace(tmp, root)
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise InitramfsError(f"{name} has no /boot/vmlinuz-*")
    release = vmlinuz[0].name.removeprefix("vmlinuz-")
    return Kernel(vmlinuz[0], root / "lib" / "modules" / release, release)
