"""TFTP throughput and load: cwboot vs tftp-hpa (in.tftpd) vs dnsmasq, one harness, one run.

    .venv/bin/python bench/bench_tftp.py [--size-mib 4] [--repeat 3] [--windows 1,16,64]
        [--servers cwboot,in.tftpd,dnsmasq] [--load 500] [--load-mib 1] [--loss 0]
        [--load-servers cwboot,dnsmasq]

Two network namespaces joined by a veth pair (tests/services/tftp_netns.py);
each server in turn listens on 10.98.0.1:69 pinned to CPU 0 (``taskset -c 0``),
clients run in the other namespace pinned to CPU 1.

(a) throughput: ``atftp --option "blksize 1468" --option "windowsize W" -g``
    of a random ``--size-mib`` file, wall time of the client process, median of
    ``--repeat`` runs, SHA-256 checked. in.tftpd and dnsmasq do not implement
    RFC 7440, so they answer without windowsize and atftp runs lockstep
    against them; their rows are the baseline. Ratios are against cwboot's
    own windowsize-1 row measured in the same run.
(b) load: ``--load`` concurrent fetches of a ``--load-mib`` file by one trio
    process running cwboot's sans-IO client (cwboot.services.tftp.fetch_tftp),
    each from its own address (10.98.1.x/16 on the client veth) so the server's
    per-peer cap stays at its default; firmware-like lockstep (blksize 1468,
    no windowsize) and windowsize 16. Reported: completed, failed (a client
    gave up: timeout or error), client retransmissions, wall time, aggregate
    MiB/s, the server's own counters and its CPU time (utime + stime from
    /proc/PID/stat) per DATA packet sent. The same lockstep load runs against
    each of ``--load-servers`` (dnsmasq: no windowsize, no counters, so its
    packet count is computed from the file size: one OACK and size // blksize + 1
    DATA per completed fetch, retransmissions not included). in.tftpd is not
    measured by default: it forks a child per transfer and its children's CPU
    time does not reach its own counters (they are not reaped into them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services.tftp_netns import SERVER, TftpNetns  # noqa: E402

SERVER_CPU, CLIENT_CPU = "0", "1"


def start_server(net: TftpNetns, kind: str, root: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    pin = ["taskset", "-c", SERVER_CPU]
    if kind == "cwboot":
        proc = net.spawn(
            "server",
            [*pin, sys.executable, "-m", "cwboot.services.tftp", "--root", str(root), "--listen", SERVER,
             "--port", "69", "--set", "max_transfers=2000"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        return proc, json.loads(proc.stdout.readline())
    if kind == "in.tftpd":
        args = ["in.tftpd", "-L", "-u", "root", "-B", "1468", "-s", str(root), "-a", f"{SERVER}:69"]
    elif kind == "dnsmasq":
        args = ["dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--enable-tftp", f"--tftp-root={root}",
                f"--listen-address={SERVER}", "--bind-interfaces", "--user=root", "--pid-file=",
                "--tftp-max=2000", "--log-facility=/dev/null"]  # fmt: skip
    else:
        raise SystemExit(f"unknown server {kind!r}")
    proc = net.spawn("server", [*pin, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise SystemExit(f"{kind} exited: {proc.stderr.read() if proc.stderr else ''}")
    return proc, {}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, and of its children it reaped (ip netns exec and taskset exec into the server: same PID)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def stop_server(net: TftpNetns, proc: subprocess.Popen[str], kind: str) -> dict[str, Any]:
    cpu = cpu_seconds(proc.pid)
    net.kill(proc, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    if kind == "cwboot" and out:
        return {**json.loads(out.strip().splitlines()[-1]), "cpu_seconds": cpu}
    return {"cpu_seconds": cpu}


def atftp_seconds(net: TftpNetns, remote: str, local: Path, windowsize: int, digest: str) -> float:
    args = ["taskset", "-c", CLIENT_CPU, "atftp", "--option", "blksize 1468"]
    if windowsize > 1:
        args += ["--option", f"windowsize {windowsize}"]
    args += ["-g", "-r", remote, "-l", str(local), SERVER]
    started = time.perf_counter()
    result = net.run("client", args, timeout=300)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or hashlib.sha256(local.read_bytes()).hexdigest() != digest:
        raise SystemExit(f"atftp failed: {result.stderr[-500:]}")
    local.unlink()
    return elapsed


def add_client_addresses(net: TftpNetns, count: int) -> list[str]:
    addresses = [f"10.98.{1 + i // 250}.{1 + i % 250}" for i in range(count)]
    batch = "".join(f"addr add {a}/16 dev {net.client_if}\n" for a in addresses)
    subprocess.run(["ip", "-n", net.client_ns, "-batch", "-"], input=batch, text=True, check=True, timeout=60)
    subprocess.run(["ip", "-n", net.server_ns, "route", "add", "10.98.0.0/16", "dev", net.server_if],
                   check=True, timeout=30)  # fmt: skip
    return addresses


def run_load(net: TftpNetns, addresses: list[str], remote: str, digest: str, options: dict[str, str]) -> dict[str, Any]:
    args = ["taskset", "-c", CLIENT_CPU, sys.executable, str(Path(__file__).resolve()), "--load-client",
            json.dumps({"addresses": addresses, "remote": remote, "digest": digest, "options": options})]  # fmt: skip
    result = net.run("client", args, timeout=600, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"load client failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_client(spec: dict[str, Any]) -> None:
    """Runs in the client namespace: every address fetches the file once, all at the same time."""
    import trio

    from cwboot.services.tftp import fetch_tftp

    results: list[dict[str, Any]] = []

    async def fetch(address: str) -> None:
        r = await fetch_tftp(SERVER, 69, spec["remote"], options=spec["options"], bind=address)
        ok = r.ok and hashlib.sha256(r.data).hexdigest() == spec["digest"]
        results.append({"ok": ok, "error": r.error, "retransmits": r.retransmits, "bytes": len(r.data)})

    async def main() -> float:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for address in spec["addresses"]:
                nursery.start_soon(fetch, address)
        return trio.current_time() - started

    elapsed = trio.run(main)
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["error"] or "bad checksum"] = errors.get(r["error"] or "bad checksum", 0) + 1
    print(json.dumps({
        "fetches": len(results),
        "completed": sum(r["ok"] for r in results),
        "failed": sum(not r["ok"] for r in results),
        "timeouts": sum(r["error"] == "timed out" for r in results),
        "errors": errors,
        "client_retransmits": sum(r["retransmits"] for r in results),
        "seconds": round(elapsed, 2),
        "aggregate_mib_s": round(sum(r["bytes"] for r in results if r["ok"]) / elapsed / 2**20, 2),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=float, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--windows", default="1,16,64")
    parser.add_argument("--servers", default="cwboot,in.tftpd,dnsmasq")
    parser.add_argument("--load", type=int, default=500, help="concurrent fetches (0 = skip)")
    parser.add_argument("--load-mib", type=float, default=1)
    parser.add_argument("--load-servers", default="cwboot,dnsmasq",
                        help="servers under the lockstep load (windowsize 16: cwboot only)")  # fmt: skip
    parser.add_argument("--loss", type=float, default=0, help="percent loss toward the client during (a) and (b)")
    parser.add_argument("--load-client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_client:
        load_client(json.loads(args.load_client))
        return

    windows = [int(w) for w in args.windows.split(",")]
    report: dict[str, Any] = {"throughput": [], "load": []}
    with tempfile.TemporaryDirectory(prefix="cwboot-bench-tftp-") as tmp, TftpNetns(prefix="cwb") as net:
        root = Path(tmp) / "root"
        root.mkdir()
        os.chmod(tmp, 0o755)
        rng = random.Random(1)
        big = rng.randbytes(int(args.size_mib * 2**20))
        (root / "big").write_bytes(big)
        load_file = rng.randbytes(int(args.load_mib * 2**20))
        (root / "load").write_bytes(load_file)
        digest_big = hashlib.sha256(big).hexdigest()
        link = net.impair(loss_percent=args.loss, toward="client")
        report["link"] = link
        print(f"link: veth pair, {link}; file {args.size_mib} MiB; median of {args.repeat}", file=sys.stderr)

        # (a) throughput
        for kind in args.servers.split(","):
            proc, _ = start_server(net, kind, root)
            try:
                for windowsize in windows:
                    if kind != "cwboot" and windowsize != 1:
                        continue  # no RFC 7440: would measure lockstep again
                    runs = [atftp_seconds(net, "big", Path(tmp) / "got", windowsize, digest_big) for _ in range(args.repeat)]
                    seconds = statistics.median(runs)
                    row = {"server": kind, "windowsize": windowsize, "seconds": round(seconds, 3),
                           "mib_s": round(args.size_mib / seconds, 2)}  # fmt: skip
                    report["throughput"].append(row)
                    print(json.dumps(row), file=sys.stderr)
            finally:
                stop_server(net, proc, kind)
        lockstep = next((r["mib_s"] for r in report["throughput"] if r["server"] == "cwboot" and r["windowsize"] == 1), None)
        for row in report["throughput"]:
            row["x_cwboot_lockstep"] = round(row["mib_s"] / lockstep, 2) if lockstep else None

        # (b) load
        if args.load:
            addresses = add_client_addresses(net, args.load)
            digest_load = hashlib.sha256(load_file).hexdigest()
            runs = [(kind, {"blksize": "1468"}) for kind in args.load_servers.split(",")]
            if "cwboot" in args.load_servers.split(","):
                runs.append(("cwboot", {"blksize": "1468", "windowsize": "16"}))
            for kind, options in runs:
                proc, _ = start_server(net, kind, root)
                try:
                    row = run_load(net, addresses, "load", digest_load, options)
                finally:
                    server_stats = stop_server(net, proc, kind)
                row["kind"] = kind
                row["options"] = options
                row["server"] = {k: server_stats.get(k) for k in ("outcomes", "drops", "retransmits", "packets_sent", "cpu_seconds")}
                if kind != "cwboot":  # no counters: what a loss-free run sends
                    row["server"]["packets_sent"] = row["completed"] * (len(load_file) // int(options["blksize"]) + 2)
                row["server"]["cpu_us_per_packet_sent"] = round(1e6 * server_stats["cpu_seconds"] / row["server"]["packets_sent"], 1)
                report["load"].append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
