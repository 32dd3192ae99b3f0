"""Burst tolerance on the direct, broadcast path: N DISCOVERs from distinct MACs in one burst.

    .venv/bin/python bench/bench_dhcp_burst.py [--count 10000] [--rcvbuf BYTES] [--timeout 20]
        [--variant cwboot|cwboot-old|...] [--rounds 2]

perfdhcp always acts as a relay and paces itself; this client does what a boot
storm on one L2 segment does: every client broadcasts at once. In the client
namespace (tests/services/dhcp_netns.py) one socket on port 68 sends COUNT
DISCOVERs with the broadcast flag, each from its own MAC (all known nodes, the
same table bench_dhcp_perfdhcp.py loads), back to back to 10.99.0.1:67; the
cwboot server (its own process, pinned to CPU 0) broadcasts the OFFERs to
255.255.255.255:68. Reported: sent, answered, lost, time from the first send to
the last OFFER, and the server's drop counters. ``--rounds 2`` sends the same
burst again (new xids) once the first is answered: the retries of a storm,
which find their templates compiled (the first round is every node's first
DISCOVER: the full path). ``--variant`` is one of bench_dhcp_perfdhcp's
CWBOOT_VARIANTS (cwboot-old: the service before the fast path).
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
    parser.add_argument("--variant", default="cwboot")
    parser.add_argument("--rounds", type=int, default=1)
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
             "--serve-cwboot", pair.server_if, "--variant", args.variant],
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
        for round_ in range(args.rounds):
            base = round_ * len(packets)
            burst = packets if not round_ else [
                discover(mac, xid=base + i + 1, flags=0x8000) for i, mac in enumerate(macs)
            ]
            answered: set[int] = set()
            start = time.perf_counter()
            for data in burst:
                sock.sendto(data, (SERVER, 67))
            sent_in = time.perf_counter() - start
            last = start
            sock.settimeout(0.5)
            deadline = start + args.timeout
            while len(answered) < len(burst) and time.perf_counter() < deadline:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                reply = _wire_c.parse_untrusted(data)
                if reply.message_type == 2 and base < reply.xid <= base + len(burst) and reply.xid not in answered:
                    answered.add(reply.xid)
                    last = time.perf_counter()
            print(f"round {round_ + 1} ({args.variant}): burst of {len(burst)} DISCOVERs (distinct MACs, "
                  f"broadcast flag) sent in {sent_in * 1e3:.0f} ms")  # fmt: skip
            print(f"answered {len(answered)}, lost {len(burst) - len(answered)}, "
                  f"time to last OFFER {(last - start) * 1e3:.0f} ms ({len(answered) / max(last - start, 1e-9):.0f} OFFER/s)")  # fmt: skip
        sock.close()
        server.send_signal(2)
        server.wait(timeout=10)
        stats = (
            json.loads((workdir / "stats.json").read_text())
            if (workdir / "stats.json").exists()
            else {}
        )
        print(
            f"server: received {stats.get('received')}, replied {stats.get('replied')}, "
            f"by the fast path {stats.get('fast')}, dropped {stats.get('dropped')}"
        )
    finally:
        pair.close()


if __name__ == "__main__":
    main()
