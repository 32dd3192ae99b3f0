"""``cwboot power``: power nodes on/off, cycle, reset, read their state, set their boot device.

    cwboot power status n[0-999]
    cwboot power on n[0-99] --bootdev pxe        (set next boot to PXE, then power on)
    cwboot power off|soft|cycle|reset n[0-15]
    cwboot power bootdev pxe n[0-15]             (persistent; --once for the next boot only)

Goes through the REST API (POST /api/v1/power/{op}, streamed as NDJSON); the
head runs every operation under its BMC budget (see docs/power.md). Prints one
row per node the moment that node has finished (completion order), or with
--json one JSON object per line (the API's NDJSON as is). Exit status 1 if any
node failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import httpx

from cwboot.api.object_routes import API_PREFIX
from cwboot.cli.client import ApiRequestError, api_target
from cwboot.cli.command import CliError, CommandFunc, add_command, add_group
from cwboot.cli.noderange import NodeRangeError, expand_all
from cwboot.cli.table import Column

# Longest wait for the next node's result (a queue of slow BMCs before it).
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


def stream_results(url: str, token: str, op: str, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """POST the operation asking for NDJSON; yield each node's result as the head sends it."""
    path = f"{API_PREFIX}/power/{op}"
    headers = {"authorization": f"Bearer {token}", "accept": "application/x-ndjson"}
    count = 0
    try:
        with (
            httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=REQUEST_TIMEOUT) as http,
            http.stream("POST", path, json=dict(body)) as response,
        ):
            if response.status_code >= 400:
                response.read()
                try:
                    message = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    message = response.text.strip()[:200] or response.reason_phrase
                raise ApiRequestError(response.status_code, f"{message} (HTTP {response.status_code})")
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    result = json.loads(line)
                except ValueError:
                    raise ApiRequestError(200, f"the API at {url} streamed a line that is not JSON") from None
                count += 1
                yield result
    except httpx.TimeoutException:
        raise ApiRequestError(0, f"the API at {url} sent no result for {REQUEST_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        where = f" after {count} results" if count else ""
        raise ApiRequestError(0, f"lost the API at {url}{where}: {exc}") from None


class _Rows:
    """Table rows printed one by one as results arrive, in columns sized up front."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.out = out
        node_width = max((len(n) for n in names), default=0)
        self.widths = [max(len(c.header), w) for c, w in zip(COLUMNS, (node_width, 6, 5, 7, 0, 7), strict=False)]
        self.write([c.header.upper() for c in COLUMNS])

    def write(self, cells: list[str]) -> None:
        line = "  ".join(v.ljust(w) for v, w in zip(cells[:-1], self.widths, strict=False))
        self.out.write((line + "  " + cells[-1]).rstrip() + "\n")
        self.out.flush()

    def add(self, result: Mapping[str, Any]) -> None:
        self.write([c.cell(result) for c in COLUMNS])


def run_power(args: argparse.Namespace, op: str, body: dict[str, object]) -> int:
    url, token = api_target(args)
    try:
        names = expand_all(args.nodes)
    except NodeRangeError:
        names = list(args.nodes)  # the head names the error
    as_json = getattr(args, "json", False)
    rows = None if as_json else _Rows(names, sys.stdout)
    ok = failed = 0
    for result in stream_results(url, token, op, {"nodes": list(args.nodes), **body}):
        if rows is None:
            sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            rows.add(result)
        if result.get("ok"):
            ok += 1
        else:
            failed += 1
    if failed:
        raise CliError(f"{failed} of {ok + failed} nodes failed")
    return 0


EPILOG = (
    "Each node's row is printed as soon as it has finished (completion order); "
    "with --json, one JSON object per node, a line each. Exit status 1 if any node failed."
)


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
        p = add_command(verbs, op, _op_command(op), help_text, epilog=EPILOG)
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
        verbs,
        "bootdev",
        _bootdev,
        "set the boot device: pxe or disk (persistent unless --once)",
        epilog=EPILOG,
    )
    p.add_argument("device", choices=("pxe", "disk"))
    p.add_argument("nodes", nargs="+", metavar="NODES", help="node names or ranges, e.g. n[0-99]")
    p.add_argument("--once", action="store_true", help="only for the next boot")
