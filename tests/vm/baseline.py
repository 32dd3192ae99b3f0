"""The baseline boot stack: dnsmasq (DHCP + TFTP) and nginx (HTTP) in the test's namespace.

It serves the same kernel, initramfs and root image as cwboot would, and records each
node's ``up`` report in nginx's access log (``/status/up/<mac>``), so a VM's time to
``up`` can be compared with the same boot through cwboot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.vm.harness import IPXE_DIR, Netns, mac_for

NGINX_PORT = 8090


def boot_script(head: str, cmdline: str) -> str:
    base = f"http://{head}:{NGINX_PORT}"
    return (
        "#!ipxe\n"
        f"kernel {base}/vmlinuz initrd=initrd.img {cmdline} "
        f"cwtest.image={base}/rootfs.tar.zst cwtest.report={base}/status/up/@MAC@\n"
        f"initrd --name initrd.img {base}/initrd.img\n"
        "boot\n"
    )


class Baseline:
    """dnsmasq + nginx serving ``vmlinuz``, ``initrd.img`` and ``rootfs.tar.zst`` from ``root``."""

    def __init__(
        self,
        netns: Netns,
        workdir: Path,
        vmlinuz: Path,
        initrd: Path,
        image: Path,
        cmdline: str,
        nodes: int,
    ) -> None:
        self.netns = netns
        self.root = workdir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        for src, name in ((vmlinuz, "vmlinuz"), (initrd, "initrd.img"), (image, "rootfs.tar.zst")):
            shutil.copyfile(src, self.root / name)
        (self.root / "boot.ipxe").write_text(boot_script(netns.head_ip, cmdline))
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
    access_log {self.access_log};
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
        location /status/ {{ return 204; }}
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
        hosts = "".join(f"dhcp-host={mac_for(i)},{self.netns.ip_for(i)}\n" for i in range(nodes))
        conf = workdir / "dnsmasq.conf"
        conf.write_text(
            f"""port=0
interface=br0
bind-interfaces
dhcp-authoritative
dhcp-leasefile={workdir}/dnsmasq.leases
dhcp-range={self.netns.ip_for(0)},{self.netns.ip_for(nodes + 50)},255.255.255.0,1h
{hosts}dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efihttp,option:client-arch,16
# iPXE: skip the proxyDHCP wait (175.176 = 1) and fetch the boot script over HTTP.
dhcp-option-force=tag:ipxe,175,176:1
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
        shutil.copyfile(IPXE_DIR / "ipxe.efi", self.root / "ipxe.efi")
        self.dnsmasq = self.netns.popen(
            ["dnsmasq", "-k", "-C", str(conf), f"--pid-file={workdir}/dnsmasq.pid"]
        )
        time.sleep(0.3)
        if self.dnsmasq.poll() is not None:
            raise RuntimeError(
                f"dnsmasq exited with {self.dnsmasq.returncode}; see {self.dnsmasq_log}"
            )

    def reported_up(self, mac: str) -> bool:
        pattern = re.compile(rf'"POST /status/up/{re.escape(mac)} HTTP/1\.[01]" 204')
        return bool(pattern.search(self.access_log.read_text()))
