"""Power control of nodes through their BMCs, under a budget (see service.py).

    async with trio.open_nursery() as nursery:
        power = await nursery.start(serve_power, config.power, cache_lookup)
        async with power.submit(["n0", "n1"], PowerRequest("on", bootdev="pxe")) as results:
            async for result in results:      # PowerResult per node, as each completes
                ...

Drivers are chosen by the scheme of the node's ``power_uri``; ``ipmi://`` runs
pyghmi in worker processes (ipmi.py, ipmi_worker.py).
"""

from __future__ import annotations

import math

import trio

from cwboot.config import PowerConfig
from cwboot.control.power.driver import Attempt, PowerDriver
from cwboot.control.power.ipmi import IpmiDriver
from cwboot.control.power.request import (
    BOOT_DEVICES,
    OPS,
    PowerError,
    PowerRequest,
    PowerResult,
    PowerTarget,
    parse_power_uri,
    target_for,
)
from cwboot.control.power.service import NodeLookup, PowerService, PowerStats

__all__ = [
    "BOOT_DEVICES",
    "OPS",
    "Attempt",
    "IpmiDriver",
    "NodeLookup",
    "PowerDriver",
    "PowerError",
    "PowerRequest",
    "PowerResult",
    "PowerService",
    "PowerStats",
    "PowerTarget",
    "parse_power_uri",
    "serve_power",
    "target_for",
]


async def serve_power(
    config: PowerConfig,
    lookup: NodeLookup,
    *,
    task_status: trio.TaskStatus[PowerService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the IPMI workers and the power service; reports the PowerService when ready.

    ``config.workers`` threads per worker process, and enough processes that
    ``config.max_concurrent`` operations have a thread each.
    """
    threads = max(1, config.workers)
    processes = max(1, math.ceil(config.max_concurrent / threads))
    async with trio.open_nursery() as nursery:
        ipmi = await nursery.start(IpmiDriver(processes, threads).serve)
        service = await nursery.start(PowerService(config, {"ipmi": ipmi}, lookup).serve)
        task_status.started(service)
