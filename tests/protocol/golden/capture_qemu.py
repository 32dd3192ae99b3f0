"""Capture the DHCP requests of real firmware in QEMU (TCG), for the golden tests.

    .venv/bin/python tests/protocol/golden/capture_qemu.py [seconds [machine...]]

QEMU's NIC is wired to a UDP socket on 127.0.0.1 (``-netdev socket,udp=``):
every Ethernet frame the guest sends arrives here as one datagram, and the
UDP payload of frames to port 67 is a DHCP request exactly as the firmware
sent it. Nothing answers, so each firmware keeps retrying (and OVMF moves on
from PXE to HTTP boot). Three machines:

- ``ipxe-bios``: SeaBIOS + the iPXE ROM of Debian's ipxe-qemu (pxe-e1000.rom);
- ``ipxe-uefi``: OVMF + iPXE's EFI ROM (efi-virtio.rom);
- ``uefi-pxe``: OVMF with no option ROM: the firmware's own PXE (and HTTP boot).

The first request of each distinct vendor class (option 60) is written to
``<machine>-<n>.bin`` next to this file.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from cwboot.protocol.dhcp import BadPacket, parse_untrusted  # noqa: E402

MACHINES = {
    "ipxe-bios": [
        "-machine",
        "pc",
        "-device",
        "e1000,netdev=n0,mac=52:54:00:c0:00:01,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom",
    ],
    "ipxe-uefi": [
        "-bios",
        "/usr/share/qemu/OVMF.fd",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:c0:00:02,romfile=/usr/lib/ipxe/qemu/efi-virtio.rom",
    ],
    "uefi-pxe": [
        "-bios",
        "/usr/share/qemu/OVMF.fd",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:c0:00:03,romfile=",
    ],
}


def dhcp_payload(frame: bytes) -> bytes | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17:
        return None
    udp = ip[ihl:]
    _, dport, length, _ = struct.unpack("!HHHH", udp[:8])
    return udp[8:length] if dport in (67, 4011) else None


def capture(name: str, args: list[str], seconds: float) -> list[bytes]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    rx.settimeout(0.5)
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256", "-display", "none",
           "-serial", "null", "-monitor", "none", "-boot", "n",
           "-netdev", f"socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:0", *args]  # fmt: skip
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[bytes, bytes] = {}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and qemu.poll() is None:
            try:
                frame = rx.recv(65536)
            except TimeoutError:
                continue
            payload = dhcp_payload(frame)
            if payload is None:
                continue
            try:
                pkt = parse_untrusted(payload)
            except BadPacket:
                continue
            key = pkt.options.get(60, b"") + bytes((pkt.message_type,))
            if key not in seen:
                seen[key] = payload
                print(
                    f"{name}: {pkt.options.get(60, b'')!r} type {pkt.message_type} ({len(payload)} bytes)"
                )
    finally:
        qemu.kill()
        qemu.wait()
        rx.close()
    return list(seen.values())


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 90
    names = sys.argv[2:] or list(MACHINES)
    for name in names:
        args = MACHINES[name]
        for n, payload in enumerate(capture(name, args, seconds)):
            (HERE / f"{name}-{n}.bin").write_bytes(payload)


if __name__ == "__main__":
    main()
