"""Real firmware boots through cwboot: QEMU (TCG) VMs PXE-boot to a real root filesystem.

Each VM goes DHCP -> loader -> iPXE script -> kernel + initramfs -> mount_rootfs (the
image streamed from cwboot) -> switch_root -> the image's /sbin/init reports ``up`` with
its MAC, and the test reads that status back through cwboot's REST API. Paths:

- ``bios``: SeaBIOS + the iPXE NIC ROM of ipxe-qemu (its first DHCP already says iPXE);
- ``uefi-pxe``: OVMF's own PXE client fetches ``ipxe.efi`` over cwboot's TFTP, which then
  DHCPs again as iPXE and fetches its script over HTTP;
- ``uefi-http``: OVMF's UEFI HTTP boot client (PXE switched off through fw_cfg) DHCPs as
  ``HTTPClient`` and fetches ``ipxe.efi`` from cwboot's ``/boot/loader/``;

plus eight BIOS VMs at once as eight nodes of the demo pool, and the same boot through
dnsmasq + nginx (tests/vm/baseline.py) so the baseline of bench/bench_vm_boot.py is
itself tested. Serial consoles and server logs of a failed test are kept in
artifacts/vm/<test>/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm.baseline import NGINX_PORT, Baseline, BootFiles
from tests.vm.cwboot_head import HTTP_PORT, CwbootHead, prepare_boot_files
from tests.vm.harness import Kernel, Netns, Vm, build_rootfs, mac_for, start_vm, wait_all

pytestmark = [pytest.mark.vm, pytest.mark.netns]

# Seconds from VM start to "up": one VM takes ~10 s (BIOS) / ~25-30 s (UEFI) on an idle machine.
ONE_VM_TIMEOUT = 180
EIGHT_VM_TIMEOUT = 420


@pytest.fixture
def boot_files(vm_workdir: Path, kernel: Kernel) -> BootFiles:
    return prepare_boot_files(vm_workdir / "state", kernel, build_rootfs(vm_workdir / "rootfs"))


def wait_and_stop(
    vms: list[Vm], up_times: Callable[[], dict[str, float]], timeout: float
) -> dict[str, float]:
    """``wait_all``, then every VM is killed by PID whatever happened."""
    try:
        return wait_all(vms, up_times, timeout)
    finally:
        for vm in vms:
            vm.stop()


# What each firmware path prints on its way to iPXE (proves which path the VM took).
FIRMWARE_MARKERS = {
    "bios": ["iPXE (PCI 00:02.0) starting execution"],
    "uefi-pxe": [
        "Start PXE over IPv4",
        "NBP filename is ipxe.efi",
        "NBP file downloaded successfully",
    ],
    "uefi-http": ["Start HTTP Boot over IPv4", "URI: http://{head}:{port}/boot/loader/ipxe.efi"],
}


def check_console(vm: Vm, index: int, netns: Netns, http_port: int, root: str = "tmpfs") -> None:
    """The serial console shows the firmware path, mount_rootfs's steps and the image's own init."""
    console = vm.console()
    dashed = vm.mac.replace(":", "-")
    for marker in FIRMWARE_MARKERS[vm.firmware]:
        assert marker.format(head=netns.head_ip, port=http_port) in console
    assert f"cwboot: network up on eth0: {netns.ip_for(index)}/24" in console
    assert re.search(r"cwboot: unpacked \d+ chunks", console)
    assert "cwboot: switch_root to /sbin/init" in console
    assert f"cwtest-rootfs: real root ({root}) is up on {dashed}" in console


def boot_through_cwboot(workdir: Path, firmware: str, count: int, style: str = "rwram") -> None:
    with Netns(taps=count) as netns:
        head = CwbootHead(netns, workdir / "state", count, boot_style=style)
        vms = [start_vm(netns, i, firmware, workdir) for i in range(count)]
        up = wait_and_stop(vms, head.up_times, ONE_VM_TIMEOUT if count == 1 else EIGHT_VM_TIMEOUT)
        statuses = head.statuses()
    for i, vm in enumerate(vms):
        status = statuses[vm.mac]
        assert status["name"] == f"n{i}" and status["stage"] == "up"
        phases = status["phases"]
        assert phases["initramfs"] <= phases["fetching"] <= phases["switch_root"] <= phases["up"]
        check_console(vm, i, netns, HTTP_PORT, root="overlay" if style == "overlay" else "tmpfs")
    print(
        f"{firmware} x{count} through cwboot: seconds to up {sorted(round(t, 1) for t in up.values())}"
    )


@pytest.mark.parametrize("firmware", ["bios", "uefi-pxe", "uefi-http"])
def test_one_vm_boots_to_up_through_cwboot(
    firmware: str, vm_workdir: Path, boot_files: BootFiles
) -> None:
    boot_through_cwboot(vm_workdir, firmware, 1)


def test_overlay_boot_style_through_cwboot(vm_workdir: Path, boot_files: BootFiles) -> None:
    """boot_style overlay: read-only image under a tmpfs upper layer (overlay module loaded)."""
    boot_through_cwboot(vm_workdir, "bios", 1, style="overlay")


@pytest.mark.slow
def test_eight_vms_boot_at_once_as_eight_nodes(vm_workdir: Path, boot_files: BootFiles) -> None:
    boot_through_cwboot(vm_workdir, "bios", 8)


def test_baseline_dnsmasq_nginx_boots_the_same_files(
    vm_workdir: Path, boot_files: BootFiles
) -> None:
    with Netns(taps=1) as netns:
        baseline = Baseline(netns, vm_workdir, boot_files, 1)
        vm = start_vm(netns, 0, "bios", vm_workdir)
        wait_and_stop([vm], baseline.up_times, ONE_VM_TIMEOUT)
    assert vm.mac == mac_for(0)
    check_console(vm, 0, netns, NGINX_PORT)
