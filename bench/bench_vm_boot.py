"""Seconds from QEMU start to ``up`` for 1 and 8 VMs: through cwboot and through dnsmasq + nginx.

Both stacks serve the same Debian kernel, the same cwboot initramfs and the same image
chunks (tests/vm/cwboot_head.py builds them once per run); only the DHCP/TFTP/HTTP
servers differ. Every VM runs under TCG (no KVM here), so the figures are dominated by
emulation and depend on how busy the machine's cores are: compare the ratio, measured
in the same run, more than the absolute numbers.

Run as root (network namespace + tap devices):

    .venv/bin/python bench/bench_vm_boot.py                 # bios, 1 and 8 VMs, both stacks
    .venv/bin/python bench/bench_vm_boot.py --rounds 3              # alternate, take medians
    .venv/bin/python bench/bench_vm_boot.py --firmware uefi-pxe --counts 1
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.vm.baseline import Baseline, BootFiles  # noqa: E402
from tests.vm.cwboot_head import CwbootHead, prepare_boot_files  # noqa: E402
from tests.vm.harness import FIRMWARES, Netns, build_rootfs, fetch_kernel, start_vm, wait_all  # noqa: E402

TIMEOUT = 600
STACKS = ("baseline", "cwboot")


def boot(stack: str, firmware: str, count: int, work: Path, files: BootFiles) -> list[float]:
    """Seconds to ``up`` of each of ``count`` VMs started together."""
    work.mkdir(parents=True)
    with Netns(taps=count) as netns:
        up_times: Callable[[], dict[str, float]]
        if stack == "cwboot":
            up_times = CwbootHead(netns, files.initramfs.parent, count).up_times
        else:
            up_times = Baseline(netns, work, files, count).up_times
        vms = [start_vm(netns, i, firmware, work) for i in range(count)]
        try:
            return sorted(wait_all(vms, up_times, TIMEOUT, allow_dead=True).values())
        finally:
            for vm in vms:
                vm.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firmware", choices=FIRMWARES, default="bios")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat each pair of runs (stack order alternates)"
    )
    args = parser.parse_args()
    kernel = fetch_kernel()
    times: dict[tuple[str, int], list[float]] = defaultdict(list)
    failures: dict[tuple[str, int], int] = defaultdict(int)
    work = Path(tempfile.mkdtemp(prefix="cwboot-bench-vm-"))
    for r in range(args.rounds):
        for count in args.counts:
            stacks = STACKS if r % 2 == 0 else STACKS[::-1]
            for stack in stacks:
                # A fresh head state per run: no status or lease left over from the previous one.
                run = work / f"{stack}-{count}-{r}"
                files = prepare_boot_files(run / "state", kernel, build_rootfs(run / "rootfs"))
                try:
                    got = boot(stack, args.firmware, count, run / "vms", files)
                except (RuntimeError, TimeoutError) as exc:
                    failures[stack, count] += count
                    print(f"{stack:8} {args.firmware} x{count}: FAILED: {exc}", flush=True)
                    continue
                times[stack, count] += got
                line = " ".join(f"{t:.1f}" for t in got)
                if len(got) < count:
                    failures[stack, count] += count - len(got)
                    line += f"  ({count - len(got)} VM(s) never up: logs in {run})"
                else:
                    shutil.rmtree(run)
                print(f"{stack:8} {args.firmware} x{count}: {line}", flush=True)
    if failures:
        print(f"serial consoles and server logs of the runs with failed VMs kept in {work}")
    else:
        shutil.rmtree(work)
    print()
    print(f"seconds from VM start to up ({args.firmware}, TCG, {args.rounds} round(s))")
    print(
        "| VMs | dnsmasq + nginx median / max | cwboot median / max | cwboot / baseline (median) |"
    )
    print("|---:|---:|---:|---:|")
    for count in args.counts:
        cells = []
        for stack in STACKS:
            t = times[stack, count]
            failed = f" ({failures[stack, count]} VM(s) failed)" if failures[stack, count] else ""
            cells.append(
                f"{statistics.median(t):.1f} / {max(t):.1f}{failed}" if t else f"-{failed}"
            )
        b, c = times["baseline", count], times["cwboot", count]
        ratio = f"{statistics.median(c) / statistics.median(b):.2f}" if b and c else "-"
        print(f"| {count} | {cells[0]} | {cells[1]} | {ratio} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
