"""Run one cwboot head as its own process for a storm, and seed its store beforehand.

``python -m cwboot.sim.head_process --set section.key=value ...`` loads the
configuration (overrides only; no config file is read unless CWBOOT_CONFIG
names one), starts ``cwboot.head.run_head`` and prints one JSON line with the
bound ports, then serves until SIGTERM/SIGINT, when it prints one more line,
``{"final_stats": ...}`` (every service's counters, drops by reason, as
``GET /api/v1/stats`` has them) and exits. The storm measures this process's CPU
and memory, so the head never shares a core or a GIL with the simulated nodes.

``seed`` writes what a storm needs into the head's (embedded) store before it
starts: the image objects, a naming pool, a boot config, and ``count`` nodes
with the storm's known MACs (and, for ``--power head-api``, each node's BMC).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from cwboot import config as cwconfig
from cwboot.config import Config
from cwboot.control.images import ImageStore
from cwboot.control.objects import NotFound
from cwboot.control.repo import Objects
from cwboot.control.store import open_store
from cwboot.sim.content import StormContent
from cwboot.sim.node import mac_for

POOL = "storm"
BOOT_CONFIG = "storm"


def ports_of(bound: Any) -> dict[str, int]:
    """Whatever run_head reports -> {service: port} (objects with ``.port``, or plain ints)."""
    if dataclasses.is_dataclass(bound) and not isinstance(bound, type):
        items = {f.name: getattr(bound, f.name) for f in dataclasses.fields(bound)}.items()
    elif isinstance(bound, dict):
        items = bound.items()
    else:
        items = vars(bound).items()
    out: dict[str, int] = {}
    for name, value in items:
        port = getattr(value, "port", value)
        if isinstance(port, int) and not isinstance(port, bool):
            out[name] = port
    return out


async def seed(
    config: Config,
    content: StormContent,
    count: int,
    *,
    first_index: int = 0,
    power_uris: Sequence[str] = (),
    power_password: str = "",
) -> None:
    """Image objects, pool ``storm``, boot config ``storm`` and nodes n<first>.. with mac_for(i).

    With ``power_uris`` (one per node, in order), node i also gets
    ``power_uri = power_uris[i]`` and the secret ``power_password``: its BMC,
    so the head itself can power it on (``cwboot bench storm --power head-api``).
    """
    if power_uris and len(power_uris) != count:
        raise ValueError(f"{len(power_uris)} power URIs for {count} nodes")
    store = open_store(config)
    try:
        objects = Objects(store)
        await ImageStore.from_config(config).sync_objects(objects, [content.image])
        try:
            await objects.get("naming_pool", POOL)
        except NotFound:
            await objects.create(
                "naming_pool", {"name": POOL, "prefix": "n", "network": "10.54.0.0/16"}
            )
        try:
            await objects.get("boot_config", BOOT_CONFIG)
        except NotFound:
            await objects.create("boot_config", {
                "name": BOOT_CONFIG, "kernel": content.kernel, "initramfs": content.initramfs,
                "cmdline": "console=ttyS0", "image": content.image, "boot_style": "rwram",
            })  # fmt: skip
        docs: list[dict[str, Any]] = [
            {"index": i, "naming_pool": POOL, "mac": [mac_for(i)], "boot_config": BOOT_CONFIG}
            for i in range(first_index, first_index + count)
        ]
        for doc, uri in zip(docs, power_uris, strict=False):
            doc["power_uri"] = uri
            doc["power_password"] = power_password
        await objects.create_many("node", docs)
    finally:
        await store.aclose()


async def _main(config: Config) -> None:
    from cwboot.head import run_head, service_stats

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(functools.partial(run_head, config))
            print(json.dumps(ports_of(bound)), flush=True)
            async for _ in signals:
                # The storm reads this after the run: every service's counters, drops by reason.
                final = service_stats(bound, trio.current_time())
                print(json.dumps({"final_stats": final}, default=str), flush=True)
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    overrides = [a for a in sys.argv[1:] if a != "--set"]
    trio.run(_main, cwconfig.load(None, overrides))
