"""mount_rootfs end to end: a real Debian kernel + cwboot's initramfs in QEMU, fetching its
root filesystem from two cwboot HTTP engines on 127.0.0.1 (QEMU's user network reaches
them as 10.0.2.2).

The node is handed four heads: a dead one, a busy one (max_streams=0: every chunk gets
503 + Retry-After), one whose copy of a chunk is corrupt (same size, bytes flipped: only
the xxh3 check can catch it), and a good one. It must fail over, wait out the 503,
reject the bad chunk, refetch it from the good head, mount the overlay and run the
image's /sbin/init, which prints a marker and powers off.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from cwboot.config import Config
from cwboot.control.images import ImageStore
from cwboot.control.initramfs import build_initramfs, fetch_debian_kernel
from cwboot.services.http import serve_http
from tests.vm.harness import DEFAULT_CACHE

pytestmark = [pytest.mark.vm, pytest.mark.slow]

MAC = "52:54:00:12:34:58"  # 0x58 % 4 == 0: mount_rootfs starts with the first head


class NoObjects:
    def node_by_mac(self, mac: str) -> dict[str, Any] | None:
        return None

    def get(self, kind: str, ref: str) -> dict[str, Any] | None:
        return None


def tiny_rootfs(root: Path) -> Path:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    init = root / "sbin" / "init"
    init.write_text(
        "#!/bin/busybox sh\n"
        "echo \"ROOTFS-OK $(/bin/busybox cat /etc/marker) root=$(/bin/busybox grep ' / ' /proc/mounts"
        " | /bin/busybox cut -d ' ' -f 3 | /bin/busybox tail -n 1)\"\n"
        "/bin/busybox poweroff -f\n"
    )
    init.chmod(0o755)
    (root / "etc" / "marker").write_text("hello-from-cwboot\n")
    (root / "etc" / "payload").write_bytes(os.urandom(3 << 20))
    return root


def test_overlay_boot_fails_over_and_rejects_a_corrupt_chunk(tmp_path: Path) -> None:
    kernel = fetch_debian_kernel(DEFAULT_CACHE / "generic-kernel")  # cached across runs, like tests/vm
    initrd = tmp_path / "initramfs.gz"
    build_initramfs(initrd, kernel_modules=kernel.modules_dir)
    tree = tiny_rootfs(tmp_path / "tree")
    good = ImageStore(tmp_path / "good", chunk_size=256 * 1024)
    bad = ImageStore(tmp_path / "bad", chunk_size=256 * 1024)
    m = good.import_tree("tiny", tree)
    bad.import_tree("tiny", tree)
    victim = bad.chunk_file(m.chunks[0].id)
    frame = bytearray(victim.read_bytes())
    frame[len(frame) // 2] ^= 0xFF
    victim.write_bytes(bytes(frame))

    reports: list[tuple[str, dict[str, str]]] = []
    started: queue.Queue[Any] = queue.Queue()

    async def report(mac: str, fields: dict[str, str]) -> None:
        reports.append((mac, fields))

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                ports = []
                for store, max_streams in ((good, 0), (bad, 256), (good, 256)):
                    config = Config()
                    config.http.listen, config.http.port = "127.0.0.1", 0
                    config.http.max_streams = max_streams
                    srv = await nursery.start(
                        lambda task_status, s=store, c=config: serve_http(
                            c,
                            NoObjects(),
                            s,
                            heads=list,
                            report_status=report,
                            task_status=task_status,
                        )
                    )
                    ports.append(srv.port)
                started.put((ports, scope, trio.lowlevel.current_trio_token()))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    ports, scope, token = started.get(timeout=10)
    try:
        heads = ",".join(["http://10.0.2.2:1"] + [f"http://10.0.2.2:{p}" for p in ports])
        cmdline = (
            f"console=ttyS0 quiet cwboot.heads={heads} cwboot.image=tiny cwboot.version=1 "
            f"cwboot.style=overlay cwboot.mac={MAC.replace(':', '-')} cwboot.fetch_timeout=10"
        )
        log = tmp_path / "console.log"
        with open(log, "w") as out:
            vm = subprocess.Popen(
                ["qemu-system-x86_64", "-accel", "tcg", "-m", "768", "-nographic", "-no-reboot",
                 "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
                 "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                vm.wait(timeout=240)
            except subprocess.TimeoutExpired:
                vm.kill()
                vm.wait()
                raise AssertionError("VM did not power off:\n" + log.read_text()[-3000:]) from None
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)
    console = log.read_text()
    assert "ROOTFS-OK hello-from-cwboot root=overlay" in console, console[-3000:]
    assert "fetch http://10.0.2.2:1/" in console  # the dead head was tried and left
    assert f"http://10.0.2.2:{ports[0]} is busy (503): retrying in" in console
    assert f"chunk {m.chunks[0].id} failed verification" in console
    stages = [f["stage"] for mac, f in reports if mac == MAC]
    assert stages[0] == "initramfs" and stages[-1] == "switch_root"
    assert "chunk_invalid" in stages and "failed" not in stages
