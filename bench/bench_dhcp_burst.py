"""Burst tolerance on the direct, broadcast path: N DISCOVERs from distinct MACs in one burst.

    .venv/bin/python bench/bench_dhcp_burst.py [--count 10000] [--rcvbuf BYTES] [--timeout 20]

perfdhcp always acts as a relay and paces itself; this client does what a boot
storm on one L2 segment does: every client broadcasts at once. In the client
namespace (tests/services/dhcp_netns.py) one socket on port 68 sends COUNT
DISCOVERs with the broadcast flag, each from its own MAC (all known nodes, the
same table bench_dhcp_perfdhcp.py loads), back to back to 10.99.0.1:67; the
cwboot server (its own process, pinned to CPU 0) broadcasts the OFFERs to
255.255.255.255:68. Reported: sent, answered, lost, time from the first send to
the last OFFER, and the server's drop counters.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_dhcp_perfdhcp import BASE_MAC, CLIENTS, perfdhcp_macs  # noqa: E402
from cwboot.protocol.dhcp import _wire_c  # noqa: E402
from tests.protocol.dhcp_helpers import discover  # noqa: E402
from tests.services.dhcp_netns import SERVER, NetnsPair  # noqa: E402

SO_RCVBUFFORCE = 33


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument(
        "--rcvbuf", type=int, default=0, help="server dhcp.rcvbuf_bytes (0: the default)"
    )
    parser.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()
    macs = perfdhcp_macs(BASE_MAC, CLIENTS)[: args.count]
    packets = [discover(mac, xid=i + 1, flags=0x8000) for i, mac in enumerate(macs)]
    pair = NetnsPair("cwb")
    workdir = Path(tempfile.mkdtemp(prefix="cwboot-burst-"))
    env = {**os.environ, "CWBOOT_BENCH_STATS": str(workdir / "stats.json")}
    if args.rcvbuf:
        env["CWBOOT_BENCH_RCVBUF"] = str(args.rcvbuf)
    try:
        server = pair.spawn(
            "server",
            ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "bench_dhcp_perfdhcp.py"),
             "--serve-cwboot", pair.server_if],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        line = server.stdout.readline().decode() if server.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"cwboot did not start: {line}")
        with pair.entered("client"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, pair.client_if.encode())
        sock.bind(("0.0.0.0", 68))
        answered: set[int] = set()
        start = time.perf_counter()
        for data in packets:
            sock.sendto(data, (SERVER, 67))
        sent_in = time.perf_counter() - start
        last = start
        sock.settimeout(0.5)
        deadline = start + args.timeout
        while len(answered) < len(packets) and time.perf_counter() < deadline:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            reply = _wire_c.parse_untrusted(data)
            if reply.message_type == 2 and reply.xid not in answered:
                answered.add(reply.xid)
                last = time.perf_counter()
        sock.close()
        server.send_signal(2)
        server.wait(timeout=10)
        stats = (
            json.loads((workdir / "stats.json").read_text())
            if (workdir / "stats.json").exists()
            else {}
        )
        print(
            f"burst of {len(packets)} DISCOVERs (distinct MACs, broadcast flag) sent in {sent_in * 1e3:.0f} ms"
        )
        print(f"answered {len(answered)}, lost {len(packets) - len(answered)}, "
              f"time to last OFFER {(last - start) * 1e3:.0f} ms ({len(answered) / max(last - start, 1e-9):.0f} OFFER/s)")  # fmt: skip
        print(
            f"server: received {stats.get('received')}, replied {stats.get('replied')}, dropped {stats.get('dropped')}"
        )
    finally:
        pair.close()


if __name__ == "__main__":
    main()
