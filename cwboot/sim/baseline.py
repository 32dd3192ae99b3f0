"""The baseline a storm is compared with: dnsmasq (DHCP + TFTP) and nginx (HTTP) serving the same files.

Everything comes from the storm's cwboot image store, so both stacks send
byte-identical loaders, kernels, initramfs files, manifests and chunks:

* nginx's document root mirrors cwboot's URL layout (docs/images.md):
  ``/boot/ipxe/{mac}`` per-node scripts rendered by cwboot.protocol.ipxe with
  nginx as the only head, ``/boot/kernel/*``, ``/boot/initramfs/*``,
  ``/images/{name}/{version}/manifest`` and ``/stream`` (the frames
  concatenated into one file), ``/chunks/{id}`` (symlinks to stored frames);
  ``POST /boot/status/*`` answers 204. Tuned as a site would: sendfile,
  tcp_nopush, no access log, keep-alive, 2 workers (one per core here).
* dnsmasq: static leases for every storm MAC, relayed requests answered to the
  relay (giaddr), ``undionly.kpxe`` over TFTP for PXE clients, the script URL
  (``${mac:hexhyp}``, expanded by iPXE) for user class ``iPXE``;
  ``tftp-max``/``dhcp-lease-max`` raised so its defaults (50 transfers,
  150 leases) are not what the storm measures.

dnsmasq does no DHCP on loopback interfaces, so the baseline runs in the
server side of a namespace pair (cwboot.sim.netns) only.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cwboot.control.images import ImageStore
from cwboot.protocol import ipxe
from cwboot.sim.content import StormContent
from cwboot.sim.netns import NetnsPair

LOADER = Path("/usr/lib/ipxe/undionly.kpxe")


@dataclass
class BaselineStack:
    http_url: str
    dhcp_port: int
    tftp_port: int
    pids: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """Terminate by PID (and wait); never raises."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def node_lease_address(index: int) -> str:
    """Static lease dnsmasq gives node ``index`` (inside the link network, never used for traffic)."""
    return str(ipaddress.IPv4Address("10.77.1.0") + index)


def build_docroot(
    root: Path, store: ImageStore, content: StormContent, macs: list[str], http_url: str
) -> None:
    """Mirror cwboot's URL layout under ``root`` (see the module docstring)."""
    if root.exists():
        shutil.rmtree(root)
    scripts = root / "boot" / "ipxe"
    scripts.mkdir(parents=True)
    for i, mac in enumerate(macs):
        spec = ipxe.BootSpec(mac=mac, node=f"n{i}", kernel=content.kernel, initramfs=content.initramfs,
                             image=content.image, version=content.version)  # fmt: skip
        (scripts / mac.replace(":", "-")).write_text(ipxe.render(spec, [http_url]))
    for kind, ref in (("kernel", content.kernel), ("initramfs", content.initramfs)):
        folder = root / "boot" / kind
        folder.mkdir(parents=True)
        path = store.file_path(ref)
        assert path is not None, f"{ref} is not in the image store"
        os.symlink(path, folder / ref)
    m = content.manifest
    version_dir = root / "images" / content.image / content.version
    version_dir.mkdir(parents=True)
    (version_dir / "manifest").write_bytes(m.to_json())
    chunks = root / "chunks"
    chunks.mkdir()
    with open(version_dir / "stream", "wb") as stream:
        for chunk in m.chunks:
            path = store.chunk_path(chunk.id)
            assert path is not None, f"chunk {chunk.id} missing"
            stream.write(path.read_bytes())
            if not (chunks / chunk.id).exists():
                os.symlink(path, chunks / chunk.id)


def nginx_conf(workdir: Path, docroot: Path, address: str, port: int) -> str:
    # Workers stay root: the docroot lives in a private temp folder (mode 0700).
    return f"""daemon off;
user root;
master_process on;
worker_processes 2;
worker_rlimit_nofile 65536;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    server {{
        listen {address}:{port} backlog=8192;
        root {docroot};
        location /boot/status/ {{ return 204; }}
    }}
}}
"""


def dnsmasq_conf(
    workdir: Path, tftp_root: Path, pair: NetnsPair, macs: list[str], http_url: str
) -> str:
    hosts = workdir / "dhcp-hosts"
    hosts.write_text("".join(f"{mac},{node_lease_address(i)}\n" for i, mac in enumerate(macs)))
    return f"""port=0
user=root
no-resolv
no-hosts
keep-in-foreground
log-facility={workdir}/dnsmasq.log
pid-file={workdir}/dnsmasq.pid
interface={pair.server_if}
dhcp-range=10.77.0.0,static,255.255.0.0
dhcp-hostsfile={hosts}
dhcp-leasefile={workdir}/dnsmasq.leases
dhcp-lease-max=1000000
dhcp-authoritative
enable-tftp
tftp-root={tftp_root}
tftp-max=10000
dhcp-match=set:ipxe,77,"iPXE"
dhcp-boot=tag:!ipxe,undionly.kpxe,,{pair.server_address}
dhcp-boot=tag:ipxe,{http_url}/boot/ipxe/${{mac:hexhyp}}
dhcp-option=tag:ipxe,encap:175,176,1b
"""


def start(
    workdir: Path,
    pair: NetnsPair,
    store: ImageStore,
    content: StormContent,
    macs: list[str],
    *,
    http_port: int = 8081,
) -> BaselineStack:
    """Start nginx and dnsmasq inside the pair's server namespace; ``stop()`` ends both."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_url = f"http://{pair.server_address}:{http_port}"
    docroot = workdir / "docroot"
    build_docroot(docroot, store, content, macs, http_url)
    tftp_root = workdir / "tftp"
    tftp_root.mkdir(exist_ok=True)
    shutil.copyfile(LOADER, tftp_root / LOADER.name)
    (workdir / "nginx.conf").write_text(
        nginx_conf(workdir, docroot, pair.server_address, http_port)
    )
    (workdir / "dnsmasq.conf").write_text(dnsmasq_conf(workdir, tftp_root, pair, macs, http_url))
    stack = BaselineStack(http_url, 67, 69)
    log = open(workdir / "baseline.out", "wb")
    try:
        for cmd in (
            ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"),
             "-c", str(workdir / "nginx.conf")],
            ["dnsmasq", "-C", str(workdir / "dnsmasq.conf")],
        ):  # fmt: skip
            proc = subprocess.Popen([*pair.exec_prefix("server"), *cmd], stdout=log, stderr=log)
            stack.procs.append(proc)
            stack.pids.append(proc.pid)
        _wait_listening(pair, [(http_port, "tcp"), (67, "udp"), (69, "udp")], stack)
    except BaseException:
        stack.stop()
        raise
    finally:
        log.close()
    return stack


def _wait_listening(pair: NetnsPair, ports: list[tuple[int, str]], stack: BaselineStack) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for proc in stack.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"baseline process {proc.args!r} exited with {proc.returncode}")
        out = subprocess.run([*pair.exec_prefix("server"), "ss", "-Hlntu"],
                             capture_output=True, text=True, timeout=10).stdout  # fmt: skip
        if all(f":{port} " in out for port, _ in ports):
            return
        time.sleep(0.1)
    raise RuntimeError(f"baseline did not listen on {ports} within 15 s")
