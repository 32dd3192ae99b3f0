"""A real cwboot head (``cwboot serve``) inside the VM test's namespace, and what it serves.

``prepare_boot_files`` fills an embedded head's state directory before it starts: the
test root filesystem imported as image ``vmtest``, the Debian kernel and cwboot's own
initramfs (``cwboot.control.initramfs.build_initramfs``) stored under aliases. The
same bytes are returned as ``BootFiles`` so the dnsmasq + nginx baseline serves
exactly what cwboot serves.

``CwbootHead`` runs ``python -m cwboot serve`` in the namespace (DHCP on the bridge,
TFTP, HTTP on the bridge address, the REST API on the namespace's loopback), then
creates a demo naming pool, the boot config and one node per VM through the REST
API with curl, and reads node status back the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cwboot.control.images import ImageStore
from cwboot.control.initramfs import build_initramfs
from tests.vm.baseline import BootFiles
from tests.vm.harness import Kernel, Netns, mac_for

IMAGE = "vmtest"
TOKEN = "vm-test-admin-token"
API_PORT = 8080
HTTP_PORT = 8081
# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can fail
# ("IO-APIC + timer doesn't work!", a panic); cloud images pass it for the same reason.
CMDLINE = "console=ttyS0 panic=-1 no_timer_check"
INITRAMFS_MODULES = ("virtio_pci", "virtio_net", "overlay")


def config_toml(state_dir: Path, head_ip: str, subnet_mask: str, dhcp_mode: str = "authoritative") -> str:
    return f"""[head]
name = "vmhead"
state_dir = "{state_dir}"
advertise_address = "{head_ip}"

[api]
listen = "127.0.0.1"
port = {API_PORT}
admin_tokens = ["{TOKEN}"]

[dhcp]
interface = "br0"
mode = "{dhcp_mode}"
subnet_mask = "{subnet_mask}"

[http]
listen = "{head_ip}"
port = {HTTP_PORT}
"""


def prepare_boot_files(state_dir: Path, kernel: Kernel, rootfs: Path) -> BootFiles:
    """Import the image and store kernel + initramfs into ``state_dir``'s image store."""
    images = ImageStore(state_dir / "images")
    manifest = images.import_tree(IMAGE, rootfs)
    initramfs = state_dir / "initramfs.gz"
    # The cloud kernel has no e1000/e1000e (in build_initramfs's defaults): the VMs use virtio-net.
    build_initramfs(initramfs, kernel_modules=kernel.modules, modules=INITRAMFS_MODULES)
    images.store_file(kernel.vmlinuz, alias="vmlinuz-vmtest")
    images.store_file(initramfs, alias="initramfs-vmtest")
    return BootFiles(
        vmlinuz=kernel.vmlinuz,
        initramfs=initramfs,
        image=IMAGE,
        version=manifest.version,
        manifest_txt=manifest.to_text(),
        chunks={c.id: images.chunk_file(c.id) for c in manifest.chunks},
        cmdline=CMDLINE,
    )


class CwbootHead:
    """``cwboot serve`` in ``netns`` with ``nodes`` nodes (n0.. with MACs ``mac_for(i)``)."""

    def __init__(
        self, netns: Netns, state_dir: Path, nodes: int, *, boot_style: str = "rwram",
        dhcp_mode: str = "authoritative",
    ) -> None:
        self.netns = netns
        self.log = state_dir / "cwboot-serve.log"
        config = state_dir / "cwboot.toml"
        config.write_text(config_toml(state_dir, netns.head_ip, str(netns.network.netmask), dhcp_mode))
        with self.log.open("wb") as out:
            self.proc = netns.popen(
                [
                    sys.executable,
                    "-m",
                    "cwboot",
                    "serve",
                    "--config",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent.parent,
            )
        self._wait_api(60)
        self.api("POST", "/naming_pools", {
            "name": "demo", "prefix": "n", "network": str(netns.network), "ip_offset": 100,
        })  # fmt: skip
        self.api("POST", "/boot_configs", {
            "name": "vmtest", "kernel": "vmlinuz-vmtest", "initramfs": "initramfs-vmtest",
            "cmdline": CMDLINE, "image": IMAGE, "boot_style": boot_style,
        })  # fmt: skip
        self.api("POST", "/nodes", [
            {"name": f"n{i}", "index": i, "naming_pool": "demo", "mac": [mac_for(i)], "boot_config": "vmtest"}
            for i in range(nodes)
        ])  # fmt: skip

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call with curl inside the namespace; the decoded JSON answer (None if empty)."""
        cmd = ["curl", "-sS", "--fail-with-body", "--max-time", "10", "-X", method,
               "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json"]  # fmt: skip
        if body is not None:
            cmd += ["--data-binary", json.dumps(body)]
        cmd.append(f"http://127.0.0.1:{API_PORT}/api/v1{path}")
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns.name, *cmd], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"{method} {path}: curl exit {out.returncode}: {out.stdout} {out.stderr}"
            )
        return json.loads(out.stdout) if out.stdout.strip() else None

    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"cwboot serve exited ({self.proc.returncode}): {self.log.read_text()}"
                )
            try:
                self.api("GET", "/heads")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Node status documents by MAC, as the REST API returns them."""
        return {s["mac"]: s for s in self.api("GET", "/status") if s.get("mac")}

    def up_times(self) -> dict[str, float]:
        """MAC -> wall-clock time the head recorded the node's ``up`` (its status ``phases``)."""
        return {
            mac: s["phases"]["up"]
            for mac, s in self.statuses().items()
            if s.get("stage") == "up" and "up" in s.get("phases", {})
        }
