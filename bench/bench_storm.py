"""Boot-storm benchmark: cwboot head vs dnsmasq + nginx, same storm, same link, same run.

For each node count: N simulated nodes (cwboot.sim.node: DHCP PXE + iPXE
phases relayed, TFTP loader, iPXE script, kernel, initramfs, rootfs chunk by
chunk with every chunk verified, status POST) are powered on at once against
(1) a cwboot head started as its own process and (2) dnsmasq (DHCP + TFTP) +
nginx (HTTP) serving byte-identical files, both in the server namespace of a
veth pair (optionally shaped with tc). Each run also measures its bandwidth
floor (bare os.sendfile of the same image stream, same client code, same link).

    .venv/bin/python bench/bench_storm.py --nodes 100,1000 --json storm.json --plot-prefix storm
    .venv/bin/python bench/bench_storm.py --nodes 1000 --rate 10gbit

Prints a markdown table (the one in docs/storm.md) plus per-run summaries.
The machine has 2 cores shared with everything else: repeat for noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cwboot.sim import storm  # noqa: E402
from cwboot.sim.node import NodeConfig  # noqa: E402


def row(n: int, r: storm.StormReport, ratio: str) -> str:
    f = r.floor
    return (
        f"| {n} | {r.target} | {r.up}/{r.nodes} | {r.wall:.2f} | {f.get('seconds', 0):.2f} | "
        f"{f.get('wall_over_floor', 0):.2f} | {r.boot.get('p50', 0):.2f} | {r.boot.get('p99', 0):.2f} | "
        f"{r.boot.get('p99', 0) / max(r.boot.get('p50', 1e-9), 1e-9):.2f} | "
        f"{r.server.get('cpu_seconds', 0):.1f} | {r.server.get('rss_peak_mib', 0):.0f} | "
        f"{r.bytes_served / 1e9:.2f} | {r.waits} | {ratio} |"
    )


HEADER = (
    "| nodes | target | up | wall s | floor s | wall/floor | boot p50 s | boot p99 s | p99/p50 "
    "| server CPU s | server RSS MiB | GB served | 503 waits | wall vs dnsmasq |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="100,1000", help="comma-separated node counts")
    parser.add_argument("--image", default="synthetic:32")
    parser.add_argument("--kernel-mib", type=float, default=4.0)
    parser.add_argument("--initramfs-mib", type=float, default=8.0)
    parser.add_argument("--rate", default="", help="tc rate of the head link (e.g. 1gbit, 10gbit)")
    parser.add_argument("--rootfs", choices=["chunks", "stream"], default="chunks")
    parser.add_argument("--tftp-windowsize", type=int, default=0, help="0: lockstep, as PXE ROMs")
    parser.add_argument(
        "--head-set", action="append", default=[], help="extra head setting (repeatable)"
    )
    parser.add_argument(
        "--loopback", action="store_true", help="cwboot only, over loopback (no baseline)"
    )
    parser.add_argument("--json", help="write every report there")
    parser.add_argument("--plot-prefix", help="write PREFIX-N.png per node count")
    args = parser.parse_args()

    results: dict[str, object] = {}
    lines = [HEADER]
    for n in [int(x) for x in args.nodes.split(",")]:
        reports = []
        targets = ["head"] if args.loopback else ["head", "dnsmasq"]
        for target in targets:
            options = storm.StormOptions(
                nodes=n, image=args.image, kernel_mib=args.kernel_mib, initramfs_mib=args.initramfs_mib,
                target=target, netns=not args.loopback, rate=args.rate,
                node=NodeConfig(rootfs=args.rootfs, tftp_windowsize=args.tftp_windowsize),
                head_settings=args.head_set,
            )  # fmt: skip
            report = trio.run(storm.run_storm, options)
            print(report.summary(), flush=True)
            reports.append(report)
        ratio = reports[0].wall / reports[1].wall if len(reports) == 2 and reports[1].wall else 0.0
        for r in reports:
            lines.append(row(n, r, f"{ratio:.2f}" if r.target == "head" and ratio else "-"))
        results[str(n)] = {
            "reports": [json.loads(r.to_json()) for r in reports],
            "wall_ratio": ratio,
        }
        if args.plot_prefix:
            storm.plot(reports, f"{args.plot_prefix}-{n}.png")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
