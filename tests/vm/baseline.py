"""The baseline boot stack: dnsmasq (DHCP + TFTP) and nginx (HTTP) in the test's namespace.

It serves the very same kernel, cwboot initramfs and image chunks as cwboot does, at
the URLs mount_rootfs asks for (``/images/NAME/VERSION/manifest.txt``, ``/chunks/ID``),
so only the servers differ. Status reports (``POST /boot/status/<mac>``) are answered
204 and land in nginx's access log; the root filesystem's own report (user agent
``cwtest-rootfs``, logged with its time) is the node's ``up``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.harness import IPXE_DIR, Netns, mac_for

NGINX_PORT = 8090
# The access log line of the root filesystem's report (log_format cwtest): time and MAC.
_ROOTFS_REPORT = re.compile(
    r'^([0-9.]+) "POST /boot/status/([0-9a-f-]{17}) HTTP/1\.[01]" 204 "cwtest-rootfs"$', re.M
)


@dataclass(frozen=True)
class BootFiles:
    """What a node boots: kernel, initramfs, one image version (manifest text + chunk files)."""

    vmlinuz: Path
    initramfs: Path
    image: str
    version: str
    manifest_txt: bytes
    chunks: dict[str, Path]
    cmdline: str
    style: str = "rwram"


def boot_script(head: str, files: BootFiles) -> str:
    """The kernel command line cwboot renders (cwboot.protocol.ipxe); iPXE fills in the MAC."""
    base = f"http://{head}:{NGINX_PORT}"
    args = (
        f"initrd=initramfs {files.cmdline} cwboot.heads={base} cwboot.image={files.image} "
        f"cwboot.version={files.version} cwboot.style={files.style} "
        "cwboot.mac=${net0/mac:hexhyp} cwboot.node=baseline"
    )
    return (
        "#!ipxe\n"
        f"kernel --name vmlinuz {base}/vmlinuz {args}\n"
        f"initrd --name initramfs {base}/initramfs\n"
        "boot\n"
    )


class Baseline:
    """dnsmasq + nginx serving ``files`` to ``nodes`` VMs (MACs ``mac_for(0..nodes-1)``)."""

    def __init__(self, netns: Netns, workdir: Path, files: BootFiles, nodes: int) -> None:
        self.netns = netns
        self.root = workdir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.vmlinuz, self.root / "vmlinuz")
        shutil.copyfile(files.initramfs, self.root / "initramfs")
        images = self.root / "images" / files.image / files.version
        images.mkdir(parents=True)
        (images / "manifest.txt").write_bytes(files.manifest_txt)
        (self.root / "chunks").mkdir()
        for cid, path in files.chunks.items():
            shutil.copyfile(path, self.root / "chunks" / cid)
        shutil.copyfile(IPXE_DIR / "ipxe.efi", self.root / "ipxe.efi")
        (self.root / "boot.ipxe").write_text(boot_script(netns.head_ip, files))
        self.tftp = workdir / "tftp"
        self.tftp.mkdir(exist_ok=True)
        for loader in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
            shutil.copyfile(IPXE_DIR / loader, self.tftp / loader)
        self.access_log = workdir / "nginx.access.log"
        self.access_log.write_text("")
        self.dnsmasq_log = workdir / "dnsmasq.log"
        self._start_nginx(workdir)
        self._start_dnsmasq(workdir, nodes)

    def _start_nginx(self, workdir: Path) -> None:
        tmp = workdir / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.error.log;
events {{ worker_connections 256; }}
http {{
    log_format cwtest '$msec "$request" $status "$http_user_agent"';
    access_log {self.access_log} cwtest;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen {self.netns.head_ip}:{NGINX_PORT};
        root {self.root};
        location /boot/status/ {{ return 204; }}
    }}
}}
"""
        )
        self.nginx = self.netns.popen(
            ["nginx", "-c", str(conf), "-e", str(workdir / "nginx.error.log")],
            stderr=subprocess.DEVNULL,
        )

    def _start_dnsmasq(self, workdir: Path, nodes: int) -> None:
        head = self.netns.head_ip
        conf = workdir / "dnsmasq.conf"
        conf.write_text(
            dnsmasq_addresses(self.netns, workdir, nodes, "dnsmasq")
            + f"""dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efihttp,option:client-arch,16
# iPXE: skip the proxyDHCP wait (175.176 = 1) and fetch the boot script over HTTP.
dhcp-option-force=tag:ipxe,encap:175,176,1b
dhcp-boot=tag:ipxe,http://{head}:{NGINX_PORT}/boot.ipxe
dhcp-boot=tag:!ipxe,tag:efi64,tag:!efihttp,ipxe.efi,,{head}
dhcp-option-force=tag:efihttp,60,HTTPClient
dhcp-boot=tag:!ipxe,tag:!efi64,tag:efihttp,http://{head}:{NGINX_PORT}/ipxe.efi
dhcp-boot=tag:!ipxe,tag:!efi64,tag:!efihttp,undionly.kpxe,,{head}
enable-tftp
tftp-root={self.tftp}
log-dhcp
log-facility={self.dnsmasq_log}
"""
        )
        self.dnsmasq = self.netns.popen(
            ["dnsmasq", "-k", "-C", str(conf), f"--pid-file={workdir}/dnsmasq.pid"]
        )
        time.sleep(0.3)
        if self.dnsmasq.poll() is not None:
            raise RuntimeError(
                f"dnsmasq exited with {self.dnsmasq.returncode}; see {self.dnsmasq_log}"
            )

    def up_times(self) -> dict[str, float]:
        """MAC (aa:bb:...) -> wall-clock time nginx logged that root filesystem's ``up`` report."""
        log = self.access_log.read_text(errors="replace")
        return {m.replace("-", ":"): float(t) for t, m in _ROOTFS_REPORT.findall(log)}


def dnsmasq_addresses(netns: Netns, workdir: Path, nodes: int, name: str) -> str:
    """The start of a dnsmasq config that gives VM i its fixed address ``netns.ip_for(i)`` on br0."""
    hosts = "".join(f"dhcp-host={mac_for(i)},{netns.ip_for(i)}\n" for i in range(nodes))
    return f"""port=0
# The test's folders are private to root: do not drop to nobody.
user=root
interface=br0
bind-interfaces
dhcp-authoritative
dhcp-leasefile={workdir}/{name}.leases
dhcp-range={netns.ip_for(0)},{netns.ip_for(nodes + 50)},255.255.255.0,1h
{hosts}"""
