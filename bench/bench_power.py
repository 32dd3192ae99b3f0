"""Bulk power through cwboot's power service against 1, 100 and 1,000 simulated BMCs.

    .venv/bin/python bench/bench_power.py                    # counts 1,100,1000
    .venv/bin/python bench/bench_power.py --counts 1000 --no-baseline --json

For each count it measures, with the default budget (PowerConfig: 32 threads
per IPMI worker process, 64 operations at once, one per BMC):

- ``status``: login + Get Chassis Status + logout on every BMC (cold: a new
  session each time, as every operation does);
- ``power-on``: login + set boot device PXE (once) + power on + logout.

The BMCs are simulated by ``python -m cwboot.sim.bmc`` in a separate process
(real BMCs are other machines). It counts sessions, so the figures include the
peak number of sessions any single BMC had open at once (the budget says 1).
While the power operations run, a task in the head's trio loop measures how
late its 10 ms timer fires: the head stays free to serve boots because pyghmi
runs in the worker processes.

Baseline, measured in the same run: ``ipmitool -I lanplus chassis power
status`` per node, 64 at a time (what ``xargs -P 64 ipmitool ...`` does).

``--during-storm N`` instead measures the power-on where it matters: a boot
storm of N nodes (cwboot.sim.storm, ``power="head-api"``) in which the head
under test, as its own process, powers every node on through its REST API
(``POST /api/v1/power/on``, bootdev pxe, its IPMI workers) while it serves
the boots of the nodes already up. Prints the API call to the last BMC
acknowledging power-on, the peak sessions per BMC, failures and the storm's
wall time (``--netns`` over a namespace pair, as ``cwboot bench storm``).

``--pyghmi-fixes`` instead compares one IPMI worker process (16 threads, 256
status operations, 16 at a time) with and without
cwboot.control.power.pyghmi_fixes: total time, slowest operation, and stalls
(operations of 0.4 s or more).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cwboot.config import PowerConfig  # noqa: E402
from cwboot.control.power import IpmiDriver, PowerRequest, PowerService, PowerTarget, serve_power  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class SimulatorProcess:
    """``python -m cwboot.sim.bmc --count N`` with its ports and statistics."""

    def __init__(self, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cwboot.sim.bmc", "--count", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.ports: list[int] = json.loads(self.proc.stdout.readline())["ports"]

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        stats: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return stats

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.read()
        self.proc.wait(10)
        self.proc.stdout.close()


async def loop_lag(box: list[float]) -> None:
    """Record the worst lateness of a 10 ms timer in this trio loop."""
    while True:
        t = trio.current_time()
        await trio.sleep(0.01)
        box[0] = max(box[0], trio.current_time() - t - 0.01)


async def timed(power: PowerService, names: list[str], request: PowerRequest) -> dict[str, Any]:
    lag = [0.0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop_lag, lag)
        t0 = trio.current_time()
        results = await power.run(names, request)
        elapsed = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    failed = [r for r in results if not r.ok]
    return {
        "seconds": round(elapsed, 3),
        "ops_per_s": round(len(names) / elapsed, 1),
        "failed": len(failed),
        "first_error": failed[0].error if failed else "",
        "loop_lag_ms": round(lag[0] * 1000, 1),
    }


def ipmitool_baseline(ports: list[int], parallel: int = 64) -> float:
    """Seconds for ``ipmitool chassis power status`` on every port, ``parallel`` at a time."""
    t0 = time.monotonic()
    running: list[subprocess.Popen[bytes]] = []
    for port in ports:
        while len(running) >= parallel:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.002)
        argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port)]
        running.append(
            subprocess.Popen(
                [*argv, "-U", "admin", "-P", "password", "chassis", "power", "status"],
                stdout=subprocess.DEVNULL,
            )
        )
    for p in running:
        p.wait()
    return time.monotonic() - t0


def compare_pyghmi_fixes(sim: SimulatorProcess, rounds: int = 3) -> list[dict[str, Any]]:
    """256 status operations through one worker (16 threads), with and without the fixes."""
    rows = []

    async def one_round(with_fixes: bool) -> dict[str, Any]:
        times: list[float] = []
        async with trio.open_nursery() as nursery:
            driver = await nursery.start(IpmiDriver(1, 16, pyghmi_fixes=with_fixes).serve)
            limiter = trio.CapacityLimiter(16)
            warm = PowerTarget("n", "ipmi", "127.0.0.1", sim.ports[-1], "admin", "password")
            await driver.attempt(warm, PowerRequest("status"))  # the worker has started (imports)

            async def one(port: int) -> None:
                async with limiter:
                    t = trio.current_time()
                    target = PowerTarget("n", "ipmi", "127.0.0.1", port, "admin", "password")
                    assert (await driver.attempt(target, PowerRequest("status"))).ok
                    times.append(trio.current_time() - t)

            t0 = trio.current_time()
            async with trio.open_nursery() as ops:
                for port in sim.ports[:256]:
                    ops.start_soon(one, port)
            total = trio.current_time() - t0
            nursery.cancel_scope.cancel()
        return {
            "fixes": with_fixes,
            "seconds": round(total, 3),
            "slowest_s": round(max(times), 3),
            "stalls": sum(t >= 0.4 for t in times),
        }

    for _ in range(rounds):
        for with_fixes in (False, True):
            rows.append(trio.run(one_round, with_fixes))
    return rows


def during_storm(nodes: int, *, netns: bool, as_json: bool) -> int:
    """A boot storm whose nodes the head powers on itself (cwboot bench storm --power head-api)."""
    from cwboot.sim.storm import StormOptions, run_storm

    options = StormOptions(nodes=nodes, netns=netns, power="head-api", measure_floor=False)
    report = trio.run(run_storm, options)
    p = report.power
    row = {
        "nodes": nodes, "link": report.link, "power_ok": p["ok"], "power_failed": p["failed"],
        "power_errors": p["errors"], "api_to_last_on_s": round(p["last_on_seconds"], 3),
        "api_answered_s": round(p["api_seconds"], 3),
        "peak_sessions_per_bmc": p["bmc"]["peak_sessions_per_bmc"],
        "head_peak_ops_per_bmc": p["head"].get("peak_per_bmc"),
        "nodes_served_before_last_on": p["nodes_served_before_last_on"],
        "storm_up": report.up, "storm_failures": report.failures, "storm_wall_s": round(report.wall, 2),
    }  # fmt: skip
    if as_json:
        print(json.dumps(row, indent=2))
    else:
        print(report.summary())
        print(
            f"{nodes} nodes powered on by the head during their storm: last BMC on "
            f"{row['api_to_last_on_s']:.2f} s after the API call, {row['power_failed']} power failures, "
            f"peak sessions per BMC {row['peak_sessions_per_bmc']}, storm wall {row['storm_wall_s']:.2f} s"
        )
    return 0 if p["failed"] == 0 and report.failures == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="1,100,1000")
    ap.add_argument(
        "--workers", type=int, default=PowerConfig.workers, help="threads per IPMI worker process"
    )
    ap.add_argument("--max-concurrent", type=int, default=PowerConfig.max_concurrent)
    ap.add_argument(
        "--wave-rate", type=float, default=0.0, help="power-ons started per second (0 = unshaped)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the ipmitool baseline")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--pyghmi-fixes", action="store_true", help="compare pyghmi with and without cwboot's fixes"
    )
    ap.add_argument("--during-storm", type=int, metavar="N", default=0,
                    help="power on N nodes through the head's API during their boot storm")  # fmt: skip
    ap.add_argument("--netns", action="store_true", help="--during-storm: over a namespace pair")
    args = ap.parse_args()
    if args.during_storm:
        return during_storm(args.during_storm, netns=args.netns, as_json=args.json)
    if args.pyghmi_fixes:
        sim = SimulatorProcess(256)
        try:
            comparison = compare_pyghmi_fixes(sim)
        finally:
            sim.close()
        for r in comparison:
            print(
                json.dumps(r)
                if args.json
                else f"fixes={r['fixes']!s:5}  {r['seconds']:6.3f} s  slowest {r['slowest_s']:.3f} s  stalls {r['stalls']}"
            )
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    config = PowerConfig(
        workers=args.workers,
        max_concurrent=args.max_concurrent,
        timeout=10.0,
        wave_rate=args.wave_rate,
    )
    sim = SimulatorProcess(max(counts))
    rows: list[dict[str, Any]] = []

    async def run() -> None:
        nodes = {
            f"n{i}": {
                "name": f"n{i}",
                "power_uri": f"ipmi://admin@127.0.0.1:{port}",
                "power_password": "password",
            }
            for i, port in enumerate(sim.ports)
        }
        async with trio.open_nursery() as nursery:
            power: PowerService = await nursery.start(serve_power, config, nodes.get)
            await power.run(["n0"], PowerRequest("status"))  # worker processes warm (imports)
            for count in counts:
                names = [f"n{i}" for i in range(count)]
                before = sim.stats()
                status = await timed(power, names, PowerRequest("status"))
                on = await timed(power, names, PowerRequest("on", bootdev="pxe"))
                after = sim.stats()
                # pyghmi's logout sends Close Session without awaiting its answer: give the
                # packets in flight a moment before counting sessions left open.
                with trio.move_on_after(2):
                    while after["sessions_open_now"]:
                        await trio.sleep(0.05)
                        after = sim.stats()
                rows.append(
                    {
                        "bmcs": count,
                        "status": status,
                        "power_on": on,
                        "sessions": after["sessions_opened"] - before["sessions_opened"],
                        "sessions_left_open": after["sessions_open_now"],
                        "peak_sessions_per_bmc": after["peak_sessions_per_bmc"],
                        "peak_operations_in_flight": power.stats.peak_in_flight,
                        "powered_on": after["powered_on"],
                    }
                )
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
        if not args.no_baseline:
            for row in rows:
                base = ipmitool_baseline(sim.ports[: row["bmcs"]])
                row["baseline_ipmitool_status_s"] = round(base, 3)
                row["status_speedup_vs_ipmitool"] = round(base / row["status"]["seconds"], 1)
    finally:
        sim.close()

    if args.json:
        print(
            json.dumps(
                {"workers": args.workers, "max_concurrent": args.max_concurrent, "runs": rows},
                indent=2,
            )
        )
        return 0
    print(
        f"budget: {args.workers} threads per worker process, {args.max_concurrent} operations at once, 1 per BMC"
        + (f", power-on waves of {args.wave_rate:g}/s" if args.wave_rate else "")
    )
    print(
        f"{'BMCs':>5} {'status s':>9} {'on+pxe s':>9} {'on/s':>7} {'failed':>6} {'peak/BMC':>8} {'in flight':>9} {'loop lag ms':>11} {'ipmitool s':>10} {'speedup':>7}"
    )
    for r in rows:
        print(
            f"{r['bmcs']:>5} {r['status']['seconds']:>9.3f} {r['power_on']['seconds']:>9.3f} "
            f"{r['power_on']['ops_per_s']:>7.1f} {r['status']['failed'] + r['power_on']['failed']:>6} "
            f"{r['peak_sessions_per_bmc']:>8} {r['peak_operations_in_flight']:>9} "
            f"{max(r['status']['loop_lag_ms'], r['power_on']['loop_lag_ms']):>11.1f} "
            f"{r.get('baseline_ipmitool_status_s', float('nan')):>10.3f} {r.get('status_speedup_vs_ipmitool', float('nan')):>7}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
