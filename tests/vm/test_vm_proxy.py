"""proxyDHCP with real firmware: a site DHCP server hands out addresses, cwboot only boot info.

The site server is dnsmasq with addresses only (no boot file, no PXE or iPXE options),
in the VM test's namespace on the same bridge; cwboot runs with ``dhcp.mode = "proxy"``.
A BIOS VM (SeaBIOS + the iPXE NIC ROM of ipxe-qemu) takes its address from dnsmasq and
its script URL from cwboot's proxy offer, and must reach ``up``. iPXE takes an offer
without an address for a ProxyDHCP offer only when it carries option 60 ``PXEClient``
(src/net/udp/dhcp.c): without it this VM never gets a boot file.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.baseline import BootFiles, dnsmasq_addresses
from tests.vm.cwboot_head import HTTP_PORT, CwbootHead, prepare_boot_files
from tests.vm.harness import Kernel, Netns, build_rootfs, start_vm
from tests.vm.test_vm_boot import ONE_VM_TIMEOUT, check_console, wait_and_stop

pytestmark = [pytest.mark.vm, pytest.mark.netns]


@pytest.fixture
def boot_files(vm_workdir: Path, kernel: Kernel) -> BootFiles:
    return prepare_boot_files(vm_workdir / "state", kernel, build_rootfs(vm_workdir / "rootfs"))


def start_site_dhcp(netns: Netns, workdir: Path, nodes: int) -> Path:
    """dnsmasq handing out addresses (fixed per MAC) and nothing about booting; its log path."""
    log = workdir / "site-dnsmasq.log"
    conf = workdir / "site-dnsmasq.conf"
    conf.write_text(dnsmasq_addresses(netns, workdir, nodes, "site-dnsmasq") + f"log-dhcp\nlog-facility={log}\n")
    proc = netns.popen(
        ["dnsmasq", "-k", "-C", str(conf), f"--pid-file={workdir}/site-dnsmasq.pid"],
        stdin=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"dnsmasq exited with {proc.returncode}; see {log}")
    return log


def test_bios_ipxe_boots_to_up_through_cwboot_in_proxy_mode(
    vm_workdir: Path, boot_files: BootFiles
) -> None:
    with Netns(taps=1) as netns:
        site_log = start_site_dhcp(netns, vm_workdir, 1)
        head = CwbootHead(netns, vm_workdir / "state", 1, dhcp_mode="proxy")
        vm = start_vm(netns, 0, "bios", vm_workdir)
        wait_and_stop([vm], head.up_times, ONE_VM_TIMEOUT)
        status = head.statuses()[vm.mac]
    assert status["name"] == "n0" and status["stage"] == "up"
    check_console(vm, 0, netns, HTTP_PORT)
    # The address came from the site server (cwboot in proxy mode hands out none) ...
    assert f"DHCPACK(br0) {netns.ip_for(0)} {vm.mac}" in site_log.read_text()
    # ... and the script from cwboot's proxy offer.
    assert f"http://{netns.head_ip}:{HTTP_PORT}/boot/ipxe/{vm.mac.replace(':', '-')}" in vm.console()
