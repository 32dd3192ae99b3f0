"""What a storm boots: a rootfs image, a kernel and an initramfs, put into cwboot's image store.

``--image`` may name a directory or a tar archive (imported as it is), or be
``synthetic:SIZE_MIB``: a deterministic tree of SIZE_MIB MiB whose files are
half random bytes and half text, so zstd gets about 2:1 like a real rootfs.
The kernel and initramfs are synthetic files of the given sizes (their bytes
do not matter to the harness; only their transfer does).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from cwboot.control.images import ImageStore
from cwboot.protocol.manifest import Manifest

MIB = 1024 * 1024


@dataclass(frozen=True)
class StormContent:
    image: str
    version: str
    manifest: Manifest
    kernel: str  # alias in the image store
    initramfs: str
    kernel_size: int
    initramfs_size: int


def synthetic_tree(root: Path, size_mib: int, seed: int = 8) -> Path:
    """A rootfs-like tree: etc/, usr/bin/, usr/lib/ with 256 KiB files, half random, half text."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "hostname").write_text("cwboot-sim\n")
    (root / "etc" / "os-release").write_text('NAME="cwboot storm rootfs"\n')
    words = [f"word{n:04d}" for n in range(4096)]
    piece = 256 * 1024
    for i in range(size_mib * MIB // piece):
        folder = root / "usr" / ("bin" if i % 2 else "lib")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            data = rng.randbytes(piece)
        else:
            text = " ".join(rng.choice(words) for _ in range(piece // 6))
            data = text.encode()[:piece].ljust(piece, b"\n")
        (folder / f"f{i:05d}").write_bytes(data)
    return root


def prepare(
    store: ImageStore,
    workdir: Path,
    *,
    image: str = "synthetic:32",
    kernel_mib: float = 4,
    initramfs_mib: float = 8,
    name: str = "storm",
) -> StormContent:
    """Import the rootfs and store the kernel/initramfs (aliases ``storm-kernel``/``storm-initramfs``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if image.startswith("synthetic:"):
        source = synthetic_tree(workdir / "rootfs", int(image.split(":", 1)[1]))
    else:
        source = Path(image)
    m = store.import_source(name, source)
    rng = random.Random(88)
    sizes = {}
    for alias, mib in (("storm-kernel", kernel_mib), ("storm-initramfs", initramfs_mib)):
        path = workdir / alias
        size = int(mib * MIB)
        path.write_bytes(rng.randbytes(size))
        store.store_file(path, alias=alias)
        os.unlink(path)
        sizes[alias] = size
    return StormContent(name, m.version, m, "storm-kernel", "storm-initramfs",
                        sizes["storm-kernel"], sizes["storm-initramfs"])  # fmt: skip
