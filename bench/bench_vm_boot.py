"""Seconds from QEMU start to ``up`` for 1 and 8 VMs: through cwboot and through dnsmasq + nginx.

Both stacks serve the same Debian kernel, the same cwboot initramfs and the same image
chunks (tests/vm/cwboot_head.py builds them once per run); only the DHCP/TFTP/HTTP
servers differ. Every VM runs under TCG (no KVM here), so the figures are dominated by
emulation and depend on how busy the machine's cores are: compare the ratio, measured
in the same run, more than the absolute numbers.

Run as root (network namespace + tap devices):

    .venv/bin/python bench/bench_vm_boot.py                 # bios, 1 and 8 VMs, both stacks
    .venv/bin/python bench/bench_vm_boot.py --firmware uefi-pxe --counts 1
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.vm.baseline import Baseline, BootFiles  # noqa: E402
from tests.vm.cwboot_head import CwbootHead, prepare_boot_files  # noqa: E402
from tests.vm.harness import FIRMWARES, Netns, build_rootfs, fetch_kernel, start_vm, wait_all  # noqa: E402

TIMEOUT = 600


def boot(stack: str, firmware: str, count: int, work: Path, files: BootFiles) -> list[float]:
    """Seconds to ``up`` of each of ``count`` VMs started together."""
    work.mkdir(parents=True)
    with Netns(taps=count) as netns:
        up_macs: Callable[[], set[str]]
        if stack == "cwboot":
            head = CwbootHead(netns, files.initramfs.parent, count)
            up_macs = lambda: {m for m, s in head.statuses().items() if s.get("stage") == "up"}  # noqa: E731
        else:
            baseline = Baseline(netns, work, files, count)
            up_macs = baseline.up_macs
        vms = [start_vm(netns, i, firmware, work) for i in range(count)]
        try:
            return sorted(wait_all(vms, up_macs, TIMEOUT).values())
        finally:
            for vm in vms:
                vm.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firmware", choices=FIRMWARES, default="bios")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    kernel = fetch_kernel()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="cwboot-bench-vm-"))
    try:
        for count in args.counts:
            result = {}
            for stack in ("baseline", "cwboot"):
                # A fresh head state per run: no status or lease left over from the previous one.
                state = work / f"{stack}-{count}" / "state"
                files = prepare_boot_files(
                    state, kernel, build_rootfs(work / f"{stack}-{count}" / "rootfs")
                )
                times = boot(stack, args.firmware, count, work / f"{stack}-{count}" / "vms", files)
                result[stack] = times
                print(
                    f"{stack:8} {args.firmware} x{count}: " + " ".join(f"{t:.1f}" for t in times),
                    flush=True,
                )
            rows.append((count, result))
    except BaseException:
        print(f"failed: serial consoles and server logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work)
    print()
    print(f"seconds from VM start to up ({args.firmware}, TCG)")
    print(
        "| VMs | dnsmasq + nginx median / max | cwboot median / max | cwboot / baseline (median) |"
    )
    print("|---:|---:|---:|---:|")
    for count, result in rows:
        b, c = result["baseline"], result["cwboot"]
        ratio = statistics.median(c) / statistics.median(b)
        print(
            f"| {count} | {statistics.median(b):.1f} / {max(b):.1f} | "
            f"{statistics.median(c):.1f} / {max(c):.1f} | {ratio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
