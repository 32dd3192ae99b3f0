"""``cwboot power``: power nodes on/off, cycle, reset, read their state, set their boot device.

    cwboot power status n[0-999]
    cwboot power on n[0-99] --bootdev pxe        (set next boot to PXE, then power on)
    cwboot power off|soft|cycle|reset n[0-15]
    cwboot power bootdev pxe n[0-15]             (persistent; --once for the next boot only)

Goes through the REST API (POST /api/v1/power/{op}); the head runs every
operation under its BMC budget (see docs/power.md). Prints one row per node,
or the API's answer with --json. Exit status 1 if any node failed.
"""

from __future__ import annotations

import argparse

from cwboot.api.object_routes import API_PREFIX
from cwboot.cli.client import ApiClient, api_target
from cwboot.cli.command import CliError, CommandFunc, add_command, add_group
from cwboot.cli.noderange import natural_key
from cwboot.cli.table import Column, emit

# A bulk operation answers when its last node does: allow for queues of slow BMCs.
REQUEST_TIMEOUT = 900.0

COLUMNS = (
    Column("node", "node"),
    Column("result", lambda r: "ok" if r.get("ok") else "FAILED"),
    Column("state", "state"),
    Column("bootdev", "bootdev"),
    Column("attempts", "attempts"),
    Column("seconds", "elapsed"),
    Column("error", "error"),
)

POWER_OPS = {
    "status": "show whether each node is powered on",
    "on": "power nodes on",
    "off": "power nodes off at once (no OS shutdown)",
    "soft": "ask each node's OS to shut down (ACPI soft off)",
    "cycle": "power off then on (a node that is off is powered on)",
    "reset": "hard reset (a node that is off is powered on)",
}


def run_power(args: argparse.Namespace, op: str, body: dict[str, object]) -> int:
    url, token = api_target(args)
    with ApiClient(url, token, timeout=REQUEST_TIMEOUT) as client:
        answer = client.request(
            "POST", f"{API_PREFIX}/power/{op}", json={"nodes": list(args.nodes), **body}
        )
    if getattr(args, "json", False):
        emit(args, answer, COLUMNS)
    else:
        emit(args, sorted(answer["results"], key=lambda r: natural_key(r["node"])), COLUMNS)
    if answer["failed"]:
        raise CliError(f"{answer['failed']} of {answer['ok'] + answer['failed']} nodes failed")
    return 0


def _op_command(op: str) -> CommandFunc:
    def run(args: argparse.Namespace) -> int:
        body: dict[str, object] = {}
        if getattr(args, "bootdev", None):
            body["bootdev"] = args.bootdev
        return run_power(args, op, body)

    return run


def _bootdev(args: argparse.Namespace) -> int:
    return run_power(args, "bootdev", {"bootdev": args.device, "persistent": not args.once})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = add_group(
        subparsers,
        "power",
        "power control through the BMCs: status, on, off, soft, cycle, reset, bootdev",
    )
    for op, help_text in POWER_OPS.items():
        p = add_command(verbs, op, _op_command(op), help_text)
        p.add_argument(
            "nodes", nargs="+", metavar="NODES", help="node names or ranges, e.g. n[0-99] n120"
        )
        if op in ("on", "cycle", "reset"):
            p.add_argument(
                "--bootdev",
                choices=("pxe", "disk"),
                help="set the next boot device first (same BMC session)",
            )
    p = add_command(
        verbs, "bootdev", _bootdev, "set the boot device: pxe or disk (persistent unless --once)"
    )
    p.add_argument("device", choices=("pxe", "disk"))
    p.add_argument("nodes", nargs="+", metavar="NODES", help="node names or ranges, e.g. n[0-99]")
    p.add_argument("--once", action="store_true", help="only for the next boot")
