"""perfdhcp against cwboot, Kea 2.2 (memfile, persist false) and dnsmasq, in one harness and one run.

    .venv/bin/python bench/bench_dhcp_perfdhcp.py [--rates 2000,4000,...] [--seconds 5]
        [--cpu-rate 1000] [--servers cwboot,kea,dnsmasq] [--enrol]

``--servers`` also takes cwboot-nohold, cwboot-prev, cwboot-old and cwboot-pyloop
(CWBOOT_VARIANTS: the service with its batching hold off; without reply pacing and
idle warming; with the fast path and the native loop off; ...);
CWBOOT_BENCH_HOLD=<seconds> sets the hold of the cwboot variant,
CWBOOT_BENCH_BATCH=<n> the native loop's batch size, CWBOOT_BENCH_PACE=<factor> and
CWBOOT_BENCH_PACE_FLOOR=<replies/s> its reply pacing (0: off), CWBOOT_BENCH_WARM=0 turns
idle warming off (every DISCOVER is then a node's first request, compiled on the way). With
warming, the server reports ready once its first warming sweep is done (time printed).

Two network namespaces joined by a veth pair (tests/services/dhcp_netns.py):
the server runs pinned to CPU 0 (``taskset -c 0``) on 10.99.0.1, perfdhcp
pinned to CPU 1 on 10.99.0.2, always as

    timeout T perfdhcp -4 -g single -l 10.99.0.2 -r RATE -R 50000 -p SECS -W 1000000 -s 1 10.99.0.1

(perfdhcp acts as a relay: giaddr = its address, replies to port 67.)

(a) max DORA/s with <= 1% drops: each rate in ``--rates`` for ``--seconds``, each run
    against a freshly started server (empty lease database);
    DORA/s = ACKs received / seconds, drops = 1 - ACKs / DISCOVERs sent.
(b) server CPU per DORA at ``--cpu-rate``: (utime + stime of the server
    process, from /proc/<pid>/stat) / ACKs received.

cwboot runs its real service (cwboot.services.dhcp.serve_dhcp) with a node
table holding exactly the MACs perfdhcp can generate (-b mac=00:0c:01:02:03:04
default base, -R 50000), i.e. the nodes the cache would hold. ``--enrol``
instead starts it with an empty table and unknown_mac = "enrol" (enrol-mode
figures are reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services.dhcp_netns import CLIENT, SERVER, NetnsPair, perfdhcp_macs  # noqa: E402

BASE_MAC = "00:0c:01:02:03:04"
CLIENTS = 50000


# cwboot variants (--servers): the service as it is, and with parts of it off, in the same run.
CWBOOT_VARIANTS = {
    "cwboot": "default: native recvmmsg/sendmmsg loop, fast path, 1 ms hold under load",
    "cwboot-nohold": "native loop and fast path, hold 0 (every datagram answered as soon as read)",
    "cwboot-prev": "native loop, fast path, 1 ms hold; no reply pacing, no idle warming (the service before them)",
    "cwboot-old": "the service before the fast path: Python recvfrom/sendto loop, full path only",
    "cwboot-pyloop": "fast path with the Python recvfrom/sendto loop (no batching, no hold)",
}


def serve_cwboot(interface: str, enrol: bool, variant: str = "cwboot") -> None:
    """The cwboot server process (run inside the server namespace)."""
    import trio

    from cwboot.config import DhcpConfig
    from cwboot.control.objects import validate_new
    from cwboot.policy.node_table import NodeTable
    from cwboot.protocol import dhcp
    from cwboot.services import dhcp as dhcp_service
    from cwboot.services.dhcp import serve_dhcp

    if variant in ("cwboot-old", "cwboot-pyloop"):
        dhcp_service.LOOP = "python"
    if os.environ.get("CWBOOT_BENCH_BATCH"):
        dhcp_service.BATCH = int(os.environ["CWBOOT_BENCH_BATCH"])
    warm = variant not in ("cwboot-old", "cwboot-prev") and os.environ.get("CWBOOT_BENCH_WARM", "1") != "0"
    if not warm:  # every node's first request compiles its template (the service before warming)
        dhcp_service._Warmer.idle = lambda self: None  # type: ignore[method-assign]
    if os.environ.get("CWBOOT_BENCH_PACE_FLOOR"):
        dhcp_service.PACE_FLOOR = float(os.environ["CWBOOT_BENCH_PACE_FLOOR"])

    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.99.0.0/16", "ip_offset": 1000}, 0.0
    )
    macs = [] if enrol else perfdhcp_macs(BASE_MAC, CLIENTS)
    nodes = [
        {"name": f"n{i}", "index": i, "mac": [m], "naming_pool": "default"}
        for i, m in enumerate(macs)
    ]
    table = NodeTable(nodes, [pool])
    counter = [len(nodes)]

    async def enrol_node(mac: str) -> None:
        table.add(
            {"name": f"n{counter[0]}", "index": counter[0], "mac": [mac], "naming_pool": "default"}
        )
        counter[0] += 1

    # Enrol mode measures the cost of enrolment, not the flood guard: lift dhcp.enrol_rate.
    config = DhcpConfig(
        port=67, interface=interface, router=SERVER, unknown_mac="enrol" if enrol else "ignore",
        enrol_rate=1e9, enrol_burst=1_000_000,
    )  # fmt: skip

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: serve_dhcp(
                    config,
                    table,
                    head_address=SERVER,
                    http_port=8081,
                    enrol=enrol_node,
                    fast=variant != "cwboot-old",
                    hold=0.0 if variant not in ("cwboot", "cwboot-prev")
                    else float(os.environ.get("CWBOOT_BENCH_HOLD", dhcp_service.HOLD)),
                    pace=0.0 if variant == "cwboot-prev"
                    else float(os.environ.get("CWBOOT_BENCH_PACE", dhcp_service.PACE)),
                    task_status=task_status,
                )
            )
            # A head's cache holds its nodes long before they boot: let the service warm the
            # fast path (in its idle time) before perfdhcp starts; timed and reported.
            started = time.monotonic()
            while warm and not bound.stats.warm_sweeps and time.monotonic() - started < 120:
                await trio.sleep(0.05)
            print(f"ready backend={dhcp.backend} loop={dhcp_service.LOOP} variant={variant} nodes={len(nodes)} "
                  f"warmed={bound.stats.warmed} in {time.monotonic() - started:.2f} s", flush=True)  # fmt: skip
            try:
                await trio.sleep_forever()
            finally:
                Path(os.environ.get("CWBOOT_BENCH_STATS", "/dev/null")).write_text(
                    json.dumps(bound.stats.as_dict())
                )

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


def kea_config(interface: str, workdir: Path) -> Path:
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "udp"},
            "lease-database": {"type": "memfile", "persist": False},
            "valid-lifetime": 3600,
            "subnet4": [{"id": 1, "subnet": "10.99.0.0/16", "pools": [{"pool": "10.99.1.0 - 10.99.254.254"}],
                         "option-data": [{"name": "routers", "data": SERVER}]}],
            "loggers": [{"name": "kea-dhcp4", "severity": "FATAL", "output_options": [{"output": "stderr"}]}],
        }
    }  # fmt: skip
    path = workdir / "kea.json"
    path.write_text(json.dumps(config))
    return path


def server_command(name: str, pair: NetnsPair, workdir: Path, enrol: bool) -> list[str]:
    if name in CWBOOT_VARIANTS:
        args = [sys.executable, str(Path(__file__).resolve()), "--serve-cwboot", pair.server_if]
        return args + (["--enrol"] if enrol else []) + ["--variant", name]
    if name == "kea":
        return ["/usr/sbin/kea-dhcp4", "-c", str(kea_config(pair.server_if, workdir))]
    if name == "dnsmasq":
        return ["dnsmasq", "--no-daemon", "--port=0", f"--interface={pair.server_if}", "--bind-interfaces",
                "--dhcp-range=10.99.1.0,10.99.254.254,255.255.0.0,1h", "--leasefile-ro",
                "--dhcp-authoritative", "--no-ping", "--dhcp-lease-max=100000", f"--pid-file={workdir / 'dnsmasq.pid'}",
                "--log-facility=-", "--quiet-dhcp", "--conf-file=/dev/null"]  # fmt: skip
    raise ValueError(name)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_perfdhcp(pair: NetnsPair, rate: int, seconds: int) -> dict[str, float]:
    cmd = [*pair.exec_prefix("client"), "taskset", "-c", "1", "timeout", str(seconds + 15), "perfdhcp", "-4",
           "-g", "single", "-l", CLIENT, "-r", str(rate), "-R", str(CLIENTS), "-p", str(seconds), "-W", "1000000",
           "-s", "1", SERVER]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    sent = [int(x) for x in re.findall(r"sent packets: (\d+)", out)]
    received = [int(x) for x in re.findall(r"received packets: (\d+)", out)]
    if len(sent) < 2:
        return {
            "rate": rate,
            "discovers": sent[0] if sent else 0,
            "acks": 0,
            "dora_per_s": 0.0,
            "drop": 1.0,
        }
    return {
        "rate": rate,
        "discovers": sent[0],
        "acks": received[1],
        "dora_per_s": received[1] / seconds,
        "drop": 1 - received[1] / max(sent[0], 1),
        "command": " ".join(cmd[cmd.index("perfdhcp") :]),
    }


def start_server(name: str, pair: NetnsPair, enrol: bool) -> subprocess.Popen[bytes]:
    """A fresh server (fresh lease database) pinned to CPU 0 in the server namespace."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cwboot-bench-{name}-"))
    env = {**os.environ, "KEA_LOCKFILE_DIR": str(workdir), "KEA_PIDFILE_DIR": str(workdir),
           "CWBOOT_BENCH_STATS": str(workdir / "stats.json")}  # fmt: skip
    server = pair.spawn("server", ["taskset", "-c", "0", *server_command(name, pair, workdir, enrol)], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    if name.startswith("cwboot"):
        line = server.stdout.readline().decode() if server.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"cwboot did not start: {line}")
        server.ready_line = line.strip()  # type: ignore[attr-defined]
    else:
        time.sleep(1.5)
    if server.poll() is not None:
        raise RuntimeError(
            f"{name} exited: {server.stdout.read().decode() if server.stdout else ''}"
        )
    server.stats_file = env["CWBOOT_BENCH_STATS"]  # type: ignore[attr-defined]
    return server


def stop_server(server: subprocess.Popen[bytes], name: str = "") -> None:
    if name.startswith("cwboot"):  # SIGINT: it writes its counters (CWBOOT_BENCH_STATS) and exits
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=10)


def rcvbuf_errors(pair: NetnsPair, side: str) -> int:
    """UDP datagrams the kernel dropped in ``side``'s namespace because a socket buffer was full
    (perfdhcp's on the client side: where the drops of a loaded client core show up)."""
    out = subprocess.run([*pair.exec_prefix(side), "nstat", "-az", "UdpRcvbufErrors"],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    for line in out.splitlines():
        if line.startswith("UdpRcvbufErrors"):
            return int(line.split()[1])
    return 0


def measure(name: str, pair: NetnsPair, rate: int, seconds: int, enrol: bool) -> dict[str, float]:
    """One perfdhcp run against a fresh server, with the server's CPU time per completed DORA."""
    server = start_server(name, pair, enrol)
    try:
        ready = getattr(server, "ready_line", "")
        before = cpu_seconds(server.pid)
        buffers = {side: rcvbuf_errors(pair, side) for side in ("client", "server")}
        result = run_perfdhcp(pair, rate, seconds)
        for side, count in buffers.items():
            result[f"{side}_rcvbuf_errors"] = rcvbuf_errors(pair, side) - count
        result["cpu_us_per_dora"] = (
            (cpu_seconds(server.pid) - before) * 1e6 / max(result["acks"], 1)
        )
        if ready:
            result["ready"] = ready  # type: ignore[assignment]
    finally:
        stop_server(server, name)
    stats_file = Path(server.stats_file)  # type: ignore[attr-defined]
    if stats_file.exists() and stats_file.stat().st_size:
        result["server_stats"] = json.loads(stats_file.read_text())  # type: ignore[assignment]
    return result


def server_note(result: dict[str, object]) -> str:
    """Full socket buffers on each side; cwboot's own counters: replies by the fast path, drops by reason."""
    note = f" [rcvbuf drops: client {result.get('client_rcvbuf_errors')}, server {result.get('server_rcvbuf_errors')}]"
    stats = result.get("server_stats")
    if not isinstance(stats, dict):
        return note
    replied = sum(stats["replied"].values())
    return note + f" [cwboot: {stats['received']} received, {replied} replied, {stats.get('fast', 0)} by the fast path, dropped {stats['dropped']}]"


def bench_server(
    name: str, rates: list[int], seconds: int, cpu_rate: int, enrol: bool
) -> dict[str, object]:
    pair = NetnsPair("cwp")
    try:
        # (b) CPU per DORA at a fixed rate.
        fixed = measure(name, pair, cpu_rate, seconds, enrol)
        if fixed.get("ready"):
            print(f"  {name}: {fixed['ready']}")
        print(f"  {name}: rate {cpu_rate}/s -> {fixed['dora_per_s']:.0f} DORA/s, drop {fixed['drop']:.2%}, "
              f"server CPU {fixed['cpu_us_per_dora']:.1f} us/DORA{server_note(fixed)}")  # fmt: skip
        # (a) rate ladder: the highest completed rate with <= 1% drops.
        ladder = []
        best = 0.0
        for rate in rates:
            result = measure(name, pair, rate, seconds, enrol)
            ladder.append(result)
            print(f"  {name}: rate {rate}/s -> {result['dora_per_s']:.0f} DORA/s, drop {result['drop']:.2%}, "
                  f"CPU {result['cpu_us_per_dora']:.1f} us/DORA{server_note(result)}")  # fmt: skip
            if result["drop"] <= 0.01:
                best = max(best, result["dora_per_s"])
            elif result["drop"] > 0.3:
                break  # far past saturation
        return {"server": name, "max_dora_per_s_1pct": best, "fixed": fixed, "ladder": ladder}
    finally:
        pair.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-cwboot", metavar="IFACE")
    parser.add_argument("--enrol", action="store_true")
    parser.add_argument("--variant", default="cwboot", choices=sorted(CWBOOT_VARIANTS))
    parser.add_argument("--servers", default="cwboot,kea,dnsmasq")
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,12000,16000,20000")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--cpu-rate", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.serve_cwboot:
        serve_cwboot(args.serve_cwboot, args.enrol, args.variant)
        return
    rates = [int(r) for r in args.rates.split(",")]
    results = {}
    for name in args.servers.split(","):
        print(f"{name}:")
        results[name] = bench_server(
            name, rates, args.seconds, args.cpu_rate, args.enrol and name.startswith("cwboot")
        )
    print("\nsummary (same run):")
    kea = results.get("kea")
    for name, r in results.items():
        line = f"  {name:11s} max {r['max_dora_per_s_1pct']:7.0f} DORA/s at <=1% drops; {r['fixed']['cpu_us_per_dora']:7.1f} us CPU/DORA"  # type: ignore[index]
        if kea and name != "kea":
            if kea["max_dora_per_s_1pct"]:
                line += f"; {r['max_dora_per_s_1pct'] / kea['max_dora_per_s_1pct']:.2f}x Kea's rate"  # type: ignore[operator]
            line += f"; {r['fixed']['cpu_us_per_dora'] / kea['fixed']['cpu_us_per_dora']:.2f}x Kea's CPU per DORA"  # type: ignore[index]
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
