"""``cwboot demo``: a head node serving a demo cluster on loopback, and a boot storm through it.

What it does, with the embedded store in a state directory of its own (no
etcd, nothing written under /etc or /var):

1. imports a demo root filesystem (a generated tree) as chunked zstd, and
   stores a demo kernel and initramfs (placeholder bytes: simulated nodes fetch
   them over HTTP but do not execute them; real VMs boot through the same head
   in tests/vm),
2. creates naming pool ``default`` (10.54.0.0/16), boot config ``default`` and
   ``--nodes`` nodes n0.. with the MACs the simulated nodes use,
3. starts the head (DHCP, TFTP, HTTP boot, REST API, power) on 127.0.0.1,
   prints what listens where and how to reach the API,
4. powers on ``--nodes`` simulated nodes at once: each does DHCP as a PXE ROM,
   fetches the iPXE loader over TFTP, DHCPs again as iPXE, fetches its script,
   kernel, initramfs and every rootfs chunk (each verified), and reports `up`,
5. prints the storm's report and keeps serving until Ctrl+C (``--exit`` stops).

Needs root: the simulated nodes' DHCP relay binds port 67 on a loopback
address (servers answer relays on port 67, RFC 2131 4.1).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import tempfile
from pathlib import Path

import trio

from cwboot import config as cwconfig
from cwboot.cli.command import CliError, add_command

DEMO_POOL = "default"
DEMO_BOOT_CONFIG = "default"


def demo_config(state_dir: Path, overrides: list[str]) -> cwconfig.Config:
    """Loopback everything, kernel-chosen ports, the embedded store in ``state_dir``."""
    settings = [
        f"head.state_dir={str(state_dir)!r}",
        "head.name=demo-head",
        "head.advertise_address=127.0.0.1",
        "store.backend=embedded",
        *(f"{svc}.listen=127.0.0.1" for svc in ("api", "dhcp", "tftp", "http")),
        *(f"{svc}.port=0" for svc in ("api", "dhcp", "tftp", "http")),
        *overrides,
    ]
    data: dict[str, dict[str, object]] = {}
    for text in settings:
        section, key, value = cwconfig.parse_override(text)
        data.setdefault(section, {})[key] = value
    return cwconfig.from_dict(data)


async def seed_demo(config: cwconfig.Config, nodes: int, image_mib: int) -> None:
    """Image, kernel, initramfs, pool, boot config and nodes, written before the head starts."""
    from cwboot.control.images import ImageStore
    from cwboot.control.objects import NotFound
    from cwboot.control.repo import Objects
    from cwboot.control.store import open_store
    from cwboot.sim import content
    from cwboot.sim.storm import storm_node_docs

    images = ImageStore.from_config(config)
    if "demo" not in images.names():
        print(f"importing a {image_mib} MiB demo root filesystem as chunked zstd ...", flush=True)
        demo = await trio.to_thread.run_sync(
            functools.partial(
                content.prepare, images, config.state_dir / "demo-src",
                image=f"synthetic:{image_mib}", kernel_mib=4, initramfs_mib=8, name="demo",
            )
        )  # fmt: skip
        kernel, initramfs = demo.kernel, demo.initramfs
    else:
        kernel, initramfs = "storm-kernel", "storm-initramfs"
    store = open_store(config)
    try:
        objects = Objects(store)
        await images.sync_objects(objects, ["demo"])
        try:
            await objects.get("naming_pool", DEMO_POOL)
        except NotFound:
            await objects.create("naming_pool", {"name": DEMO_POOL, "prefix": "n", "network": "10.54.0.0/16"})
        try:
            await objects.get("boot_config", DEMO_BOOT_CONFIG)
        except NotFound:
            await objects.create("boot_config", {
                "name": DEMO_BOOT_CONFIG, "kernel": kernel, "initramfs": initramfs,
                "cmdline": "console=ttyS0", "image": "demo", "boot_style": "rwram",
                "description": "demo cluster: synthetic image, placeholder kernel/initramfs",
            })  # fmt: skip
        have = {n["index"] for n in await objects.list("node")}
        missing = [d for d in storm_node_docs(nodes) if d["index"] not in have]
        if missing:
            await objects.create_many("node", missing)
    finally:
        await store.aclose()


async def run_demo(config: cwconfig.Config, nodes: int, image_mib: int, stay: bool) -> int:
    from cwboot.head import HeadPorts, run_head
    from cwboot.sim.storm import demo_storm

    await seed_demo(config, nodes, image_mib)
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(run_head, config)
        token_file = config.state_dir / "admin.token"
        print(f"\ncwboot demo head '{ports.name}' is serving (embedded store in {config.state_dir}):")
        for line in ports.describe():
            print("  " + line)
        print("\nTry, in another shell:")
        print(f"  export CWBOOT_URL=http://127.0.0.1:{ports.api} CWBOOT_TOKEN=$(cat {token_file})")
        # The venv's cwboot is not on a newcomer's PATH: name the one that is running.
        beside = Path(sys.executable).with_name("cwboot")
        cli = str(beside) if beside.exists() else "cwboot"
        print(f"  {cli} nodes ls 'n[0-9]'; {cli} status ls; {cli} images ls\n")
        print(f"powering on {nodes} simulated nodes at once (DHCP -> TFTP -> iPXE -> kernel/initramfs -> rootfs -> up) ...",
              flush=True)  # fmt: skip
        report = await demo_storm(ports, nodes)
        print(report.summary(), flush=True)
        ok = report.failures == 0 and report.up == nodes
        print(f"\nboot storm {'succeeded' if ok else 'FAILED'}: {report.up}/{nodes} nodes up in {report.wall:.1f} s",
              flush=True)  # fmt: skip
        if stay:
            print("still serving; Ctrl+C to stop.", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
        nursery.cancel_scope.cancel()
    return 0 if ok else 1


def _demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CliError("cwboot demo needs root: simulated nodes relay DHCP from port 67 on loopback")
    if not 1 <= args.nodes <= 5000:
        raise CliError("--nodes: expected 1 to 5000")
    state = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix="cwboot-demo-"))
    config = demo_config(state, args.overrides or [])
    return trio.run(run_demo, config, args.nodes, args.image_mib, not args.exit)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        subparsers,
        "demo",
        _demo,
        "run a head node serving a demo cluster on loopback and boot simulated nodes through it",
        description=__doc__,
        epilog="example: cwboot demo --nodes 200 --exit",
    )
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes to boot at once (default 100)")
    parser.add_argument("--image-mib", type=int, default=8, help="size of the demo root filesystem in MiB (default 8)")
    parser.add_argument("--state-dir", default="", help="where the embedded store and images live (default: a new temp dir)")
    parser.add_argument("--exit", action="store_true", help="stop after the storm instead of serving until Ctrl+C")
