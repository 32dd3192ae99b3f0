"""``cwboot bench storm``: boot N simulated nodes at once and report how the head coped.

Examples::

    cwboot bench storm --nodes 1000 --image synthetic:32 --netns --baseline dnsmasq \\
        --json storm.json --plot storm.png
    cwboot bench storm --nodes 1000 --netns --power head-api --no-floor
    cwboot bench storm --nodes 200 --target running --dhcp 127.0.0.1:6767 --tftp-port 6969 \\
        --http-url http://127.0.0.1:8081 --image-name rocky9

See docs/storm.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import json

import trio

from cwboot.cli.command import CliError, add_group
from cwboot.sim import storm
from cwboot.sim.node import NodeConfig


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def _options(args: argparse.Namespace, target: str) -> storm.StormOptions:
    running = None
    if target == "running":
        if not (args.dhcp and args.http_url and args.image_name):
            raise CliError("--target running needs --dhcp, --http-url and --image-name")
        running = storm.RunningTarget(
            dhcp=args.dhcp, tftp_port=args.tftp_port, http_url=args.http_url.rstrip("/"),
            image=args.image_name, version=args.image_version, pids=args.server_pid or [],
        )  # fmt: skip
    node = NodeConfig(rootfs=args.rootfs, decode=args.decode, tftp_windowsize=args.tftp_windowsize)
    return storm.StormOptions(
        nodes=args.nodes, image=args.image, kernel_mib=args.kernel_mib,
        initramfs_mib=args.initramfs_mib, target=target, running=running, netns=args.netns,
        rate=args.rate, node=node, launch_rate=args.launch_rate, power=args.power, measure_floor=not args.no_floor,
        head_settings=args.head_set or [], workdir=args.workdir,
    )  # fmt: skip


def _storm(args: argparse.Namespace) -> int:
    if args.rate and not args.netns:
        raise CliError("--rate shapes the namespace link: add --netns")
    if args.power == "head-api" and (args.target != "head" or args.baseline):
        raise CliError("--power head-api needs --target head and no --baseline (the head powers the nodes on)")
    targets = [args.target] + ([args.baseline] if args.baseline else [])
    reports: list[storm.StormReport] = []
    for target in targets:
        try:
            report = trio.run(storm.run_storm, _options(args, target))
        except (ValueError, RuntimeError, OSError) as exc:
            raise CliError(f"storm against {target}: {exc}") from None
        print(report.summary(), flush=True)
        reports.append(report)
    doc: dict[str, object] = {
        "reports": [json.loads(r.to_json(with_nodes=args.per_node)) for r in reports]
    }
    if len(reports) == 2 and reports[1].wall > 0:
        ratio = reports[0].wall / reports[1].wall
        doc["wall_ratio"] = ratio
        print(f"wall time {reports[0].target} / {reports[1].target}: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(doc, out, indent=2, sort_keys=True)
    if args.plot:
        storm.plot(reports, args.plot)
    return 0 if all(r.failures == 0 for r in reports) else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = add_group(subparsers, "bench", "benchmarks (boot storms with simulated nodes)")
    p = verbs.add_parser(
        "storm",
        help="boot N simulated nodes at once against a head, a running server or dnsmasq + nginx",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=100, help="simulated nodes powered on at once")
    p.add_argument("--image", default="synthetic:32",
                   help="rootfs: a directory, a tar archive, or synthetic:MIB (default synthetic:32)")  # fmt: skip
    p.add_argument("--kernel-mib", type=float, default=4.0)
    p.add_argument("--initramfs-mib", type=float, default=8.0)
    p.add_argument("--target", choices=storm.TARGETS, default="head",
                   help="head: start a cwboot head; running: an existing server; dnsmasq: the baseline")  # fmt: skip
    p.add_argument(
        "--baseline", choices=["dnsmasq"], help="also run the same storm against dnsmasq + nginx"
    )
    p.add_argument(
        "--netns", action="store_true", help="over a veth pair between two new namespaces"
    )
    p.add_argument(
        "--rate", default="", help="tc rate of the head link, e.g. 1gbit or 10gbit (--netns)"
    )
    p.add_argument("--rootfs", choices=["chunks", "stream"], default="chunks",
                   help="fetch chunk by chunk (mount_rootfs) or as one stream")  # fmt: skip
    p.add_argument("--tftp-windowsize", type=int, default=0,
                   help="ask for RFC 7440 windowsize (UEFI firmware does; PXE ROMs do not: 0)")  # fmt: skip
    p.add_argument(
        "--decode", action="store_true", help="every node decodes and proves every chunk itself"
    )
    p.add_argument(
        "--launch-rate",
        type=float,
        default=0.0,
        help="nodes powered on per second (0: all at once)",
    )
    p.add_argument("--power", choices=list(storm.POWER_MODES), default="",
                   help="ipmi: simulated BMCs powered on by cwboot's power service run in the harness; "
                        "head-api: the head under test powers them on itself (POST /api/v1/power/on, "
                        "bootdev pxe) while it serves their boots")  # fmt: skip
    p.add_argument(
        "--no-floor", action="store_true", help="skip the bare-sendfile floor measurement"
    )
    p.add_argument("--head-set", action="append", metavar="SECTION.KEY=VALUE",
                   help="extra head setting, e.g. http.max_streams=64 (repeatable)")  # fmt: skip
    p.add_argument("--dhcp", type=_host_port, help="running target: DHCP server HOST:PORT")
    p.add_argument("--tftp-port", type=int, default=69, help="running target: TFTP port")
    p.add_argument("--http-url", help="running target: HTTP base URL")
    p.add_argument("--image-name", help="running target: image the nodes boot")
    p.add_argument("--image-version", default="latest")
    p.add_argument(
        "--server-pid", type=int, action="append", help="running target: PIDs to measure"
    )
    p.add_argument("--json", metavar="PATH", help="write the JSON report there")
    p.add_argument(
        "--per-node", action="store_true", help="include every node's timeline in the JSON"
    )
    p.add_argument("--plot", metavar="PATH", help="write a PNG of nodes up over time")
    p.add_argument(
        "--workdir", default="", help="keep configs and logs there (default: a temp dir)"
    )
    p.set_defaults(func=_storm)
