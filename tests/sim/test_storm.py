"""Boot storms through a real cwboot head over loopback: every node up, every chunk verified.

The head runs as its own process (cwboot.sim.head_process: ``run_head`` with
the embedded store in a temp state dir, the storm's nodes enrolled); the
simulated nodes speak DHCP (relayed), TFTP and HTTP to it exactly as
firmware, iPXE and mount_rootfs would (cwboot.sim.node).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cwboot import config as cwconfig
from cwboot.control.images import ImageStore
from cwboot.head import run_head
from cwboot.sim import content, head_process
from cwboot.sim.node import PHASES
from cwboot.sim.storm import StormOptions, StormReport, demo_storm, run_storm


def _check(report: StormReport, nodes: int) -> None:
    failed = [n for n in report.node_results if not n["ok"]]
    assert report.failures == 0, failed[:3]
    assert report.up == nodes and len(report.up_times) == nodes
    chunks = report.settings["image_chunks"]
    assert chunks > 0
    assert all(n["chunks_verified"] == chunks for n in report.node_results)
    assert all(set(n["phases"]) == set(PHASES) for n in report.node_results)
    assert report.rootfs_bytes >= nodes * report.settings["image_compressed_bytes"]
    # The head process was measured, and it did the work.
    assert report.server["cpu_seconds"] > 0 and report.server["rss_peak_mib"] > 0
    assert report.boot["p50"] <= report.boot["p99"] <= report.wall


def test_storm_50_nodes_through_a_head() -> None:
    options = StormOptions(nodes=50, image="synthetic:4", kernel_mib=1, initramfs_mib=1,
                           floor_bytes=64 << 20, floor_connections=8)  # fmt: skip
    report = trio.run(run_storm, options)
    _check(report, 50)
    assert report.floor["bytes_per_second"] > 0 and report.floor["wall_over_floor"] > 0
    assert report.floor["samples"] == 3 and report.floor["slowest_sample_bytes_per_second"] > 0
    assert "dhcp_pxe" in report.phases and report.phases["rootfs"]["p50"] > 0
    # The head's own counters at the end, as it printed them when stopped.
    counters = report.server_counters
    assert counters["http"]["requests"] >= 50 * (len(report.phases) - 2)
    assert sum(counters["dhcp"]["replied"].values()) >= 4 * 50
    assert "drops" in counters["tftp"] and "server drops" in report.summary()


def test_storm_stream_mode_with_a_tight_stream_budget() -> None:
    """Over the head's stream budget nodes are told to wait (503 + Retry-After), never dropped."""
    options = StormOptions(nodes=30, image="synthetic:4", kernel_mib=0.5, initramfs_mib=0.5,
                           measure_floor=False,
                           head_settings=["http.max_streams=2", "http.max_queued=1", "http.max_wait=0.5"])  # fmt: skip
    options.node.rootfs = "stream"
    report = trio.run(run_storm, options)
    _check(report, 30)
    assert report.waits > 0


def test_storm_powered_on_through_ipmi() -> None:
    """Each node boots when cwboot's power service has powered it on through its simulated BMC."""
    options = StormOptions(nodes=12, image="synthetic:2", kernel_mib=0.5, initramfs_mib=0.5,
                           measure_floor=False, power="ipmi")  # fmt: skip
    report = trio.run(run_storm, options)
    _check(report, 12)


def test_storm_powered_on_by_the_head_through_its_api() -> None:
    """The head under test powers its nodes on (POST /api/v1/power/on, bootdev pxe) while it
    serves their boots: its own IPMI workers against a simulated BMC per node."""
    options = StormOptions(nodes=12, image="synthetic:2", kernel_mib=0.5, initramfs_mib=0.5,
                           measure_floor=False, power="head-api")  # fmt: skip
    report = trio.run(run_storm, options)
    _check(report, 12)
    p = report.power
    assert p["ok"] == 12 and p["failed"] == 0 and not p["errors"], p["errors"]
    # The head did it: its power service ran one operation per node, never two on one BMC.
    assert p["head"]["operations"] == 12 and p["head"]["peak_per_bmc"] == 1
    bmc = p["bmc"]
    # Each BMC: one session (login, bootdev, on, logout), never more than one open at once,
    # every session closed, and the boot it started was the PXE boot asked for.
    assert bmc["sessions_opened"] == 12 and bmc["sessions_closed"] == 12
    assert bmc["peak_sessions_per_bmc"] == 1 and bmc["sessions_open_now"] == 0
    assert bmc["powered_on"] == 12 and bmc["booted_pxe"] == 12
    # No node booted before the head was asked to power it on.
    assert all(n["started"] >= p["api_call_at"] for n in report.node_results)
    assert 0 < p["first_on_seconds"] <= p["last_on_seconds"] <= p["api_seconds"]


def test_demo_storm_through_a_head_in_this_process(tmp_path: Path) -> None:
    """What ``cwboot demo`` does: a head already running, nodes booted through it."""
    config = cwconfig.load(None, [
        f"head.state_dir={tmp_path}", "head.advertise_address=127.0.0.1", "api.enabled=false",
        *(f"{s}.{k}" for s in ("dhcp", "tftp", "http") for k in ("listen=127.0.0.1", "port=0")),
    ])  # fmt: skip
    stored = content.prepare(ImageStore.from_config(config), tmp_path / "src", image="synthetic:2",
                             kernel_mib=0.5, initramfs_mib=0.5)  # fmt: skip

    async def main() -> StormReport:
        await head_process.seed(config, stored, 20)
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(functools.partial(run_head, config))
            report = await demo_storm(ports, 20)
            nursery.cancel_scope.cancel()
        return report

    report = trio.run(main)
    assert report.failures == 0 and report.up == 20
    assert all(n["chunks_verified"] == report.settings["image_chunks"] for n in report.node_results)


@pytest.mark.storm
def test_storm_1000_nodes_small_image() -> None:
    options = StormOptions(nodes=1000, image="synthetic:2", kernel_mib=0.5, initramfs_mib=0.5,
                           floor_bytes=256 << 20)  # fmt: skip
    report = trio.run(run_storm, options)
    _check(report, 1000)


def test_bench_storm_cli_netns_shaped_link_with_baseline(tmp_path: Path) -> None:
    """`cwboot bench storm` end to end: namespace pair, tc-shaped head link, the dnsmasq +
    nginx baseline in the same command, the JSON report and the PNG plot."""
    rate_bits = 200e6
    report_file, plot_file = tmp_path / "storm.json", tmp_path / "storm.png"
    proc = subprocess.run(
        [sys.executable, "-m", "cwboot", "bench", "storm", "--nodes", "20", "--image", "synthetic:2",
         "--kernel-mib", "0.5", "--initramfs-mib", "0.5", "--netns", "--rate", "200mbit",
         "--baseline", "dnsmasq", "--no-floor", "--workdir", str(tmp_path / "work"),
         "--json", str(report_file), "--plot", str(plot_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(report_file.read_text())
    reports = {r["target"]: r for r in doc["reports"]}
    assert set(reports) == {"head", "dnsmasq"}
    for r in reports.values():
        assert r["up"] == 20 and r["failures"] == 0
        assert r["settings"]["rate"] == "200mbit"
        # The shaping took effect: the unshaped veth pair moves these bytes ~50x faster.
        assert r["bytes_served"] * 8 / r["wall"] <= rate_bits * 1.1, r["wall"]
        # What the network did, from both namespaces' own counters.
        assert {"server tcp Timeouts", "client tcp retransmitted segments", "client tcp BacklogDrop"} <= set(
            r["link_counters"]
        )
        assert r["link_counters"]["server tcp retransmitted segments"] >= 0
    assert reports["head"]["server_counters"]["http"]["requests"] >= 20 * 6
    assert doc["wall_ratio"] == pytest.approx(reports["head"]["wall"] / reports["dnsmasq"]["wall"])
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
