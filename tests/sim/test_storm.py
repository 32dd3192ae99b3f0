"""Boot storms through a real cwboot head over loopback: every node up, every chunk verified.

The head runs as its own process (cwboot.sim.head_process: ``run_head`` with
the embedded store in a temp state dir, the storm's nodes enrolled); the
simulated nodes speak DHCP (relayed), TFTP and HTTP to it exactly as
firmware, iPXE and mount_rootfs would (cwboot.sim.node).
"""

from __future__ import annotations

import pytest
import trio

from cwboot.sim.node import PHASES
from cwboot.sim.storm import StormOptions, StormReport, run_storm


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
    assert "dhcp_pxe" in report.phases and report.phases["rootfs"]["p50"] > 0


def test_storm_stream_mode_with_a_tight_stream_budget() -> None:
    """Over the head's stream budget nodes are told to wait (503 + Retry-After), never dropped."""
    options = StormOptions(nodes=30, image="synthetic:4", kernel_mib=0.5, initramfs_mib=0.5,
                           measure_floor=False, head_settings=["http.max_streams=2"])  # fmt: skip
    options.node.rootfs = "stream"
    report = trio.run(run_storm, options)
    _check(report, 30)
    assert report.waits > 0


@pytest.mark.storm
def test_storm_1000_nodes_small_image() -> None:
    options = StormOptions(nodes=1000, image="synthetic:2", kernel_mib=0.5, initramfs_mib=0.5,
                           floor_bytes=256 << 20)  # fmt: skip
    report = trio.run(run_storm, options)
    _check(report, 1000)
