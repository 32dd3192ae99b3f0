"""Capture the DHCP requests of real Linux clients (udhcpc, dhclient, perfdhcp) for the golden tests.

    .venv/bin/python tests/protocol/golden/capture_clients.py

Runs each client in a network namespace pair (tests/services/dhcp_netns.py)
against a recording responder that answers with cwboot's own codec and policy,
so each client goes through DISCOVER and REQUEST; the first request of each
message type is written to ``<client>-<type>.bin`` next to this file.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from cwboot.control.objects import validate_new  # noqa: E402
from cwboot.policy.dhcp import BootPolicy  # noqa: E402
from cwboot.policy.node_table import NodeTable  # noqa: E402
from cwboot.protocol.dhcp import BadPacket, parse_untrusted  # noqa: E402
from cwboot.services.dhcp import DhcpResponder, DhcpStats  # noqa: E402
from tests.services.dhcp_netns import CLIENT, SERVER, NetnsPair  # noqa: E402

MAC = "52:54:00:c1:00:01"
TYPES = {1: "discover", 3: "request"}


def record(sock: socket.socket, responder: DhcpResponder, name: str, stop: threading.Event) -> None:
    seen: set[int] = set()
    while not stop.is_set():
        try:
            data, source = sock.recvfrom(4096)
        except TimeoutError:
            continue
        try:
            mtype = parse_untrusted(data).message_type
        except BadPacket:
            continue
        if mtype in TYPES and mtype not in seen:
            seen.add(mtype)
            (HERE / f"{name}-{TYPES[mtype]}.bin").write_bytes(data)
            print(f"{name}: {TYPES[mtype]} ({len(data)} bytes)")
        out = responder.respond(data, source, False)
        if out is not None:
            sock.sendto(*out)


def main() -> None:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.99.0.0/16", "ip_offset": 1000}, 0.0
    )
    node = {**validate_new("node", {"index": 1, "mac": [MAC]}, 0.0), "name": "n1"}
    responder = DhcpResponder(
        BootPolicy(head_address=SERVER, http_port=8081), NodeTable([node], [pool]), DhcpStats()
    )
    clients = {
        "udhcpc": ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "2", "-T", "1", "-s", "/bin/true", "-i"],
        "dhclient": ["timeout", "5", "dhclient", "-4", "-1", "-d", "-sf", "/bin/true", "-lf", "/dev/null", "-pf", "/dev/null"],
        "perfdhcp": ["timeout", "10", "perfdhcp", "-4", "-l", CLIENT, "-r", "2", "-p", "2", "-W", "500000", "-R", "1", "-b", f"mac={MAC}", SERVER],
    }  # fmt: skip
    for name, cmd in clients.items():
        pair = NetnsPair("cwg")
        try:
            subprocess.run(
                [*pair.exec_prefix("client"), "ip", "link", "set", pair.client_if, "address", MAC],
                check=True,
            )
            with pair.entered("server"):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, pair.server_if.encode())
            sock.bind(("0.0.0.0", 67))
            sock.settimeout(0.2)
            stop = threading.Event()
            thread = threading.Thread(target=record, args=(sock, responder, name, stop))
            thread.start()
            args = cmd if name == "perfdhcp" else [*cmd, pair.client_if]
            subprocess.run(
                [*pair.exec_prefix("client"), *args],
                capture_output=True,
                timeout=30,
                start_new_session=True,
            )
            stop.set()
            thread.join()
            sock.close()
        finally:
            pair.close()


if __name__ == "__main__":
    main()
