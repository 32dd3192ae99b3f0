"""``cwboot nodes ls|show|add|update|rm``: compute nodes (in the spirit of scyld-nodectl)."""

from __future__ import annotations

import argparse
from typing import Any

from cwboot.cli.client import ApiClient, api_client
from cwboot.cli.command import CliError, add_command
from cwboot.cli.noderange import fold_names
from cwboot.cli.object_commands import (
    FieldOption,
    ObjectCommands,
    parse_assignments,
    register_object_commands,
)
from cwboot.cli.object_file import FORMATS, guess_format, parse_objects, read_source
from cwboot.cli.table import Column, print_json
from cwboot.control import objects


def effective_ips(client: ApiClient, nodes: list[dict[str, Any]]) -> None:
    """Fill ``ip`` of nodes without an explicit one with the address their naming pool derives."""
    if all(n.get("ip") for n in nodes):
        return
    pools = {p["name"]: p for p in client.list_objects("naming_pool")}
    for node in nodes:
        if not node.get("ip"):
            node["ip"] = objects.node_ip(node, pools.get(node.get("naming_pool", "")))


NODES = ObjectCommands(
    kind="node",
    command="nodes",
    help="compute nodes: ls, show, add (one or bulk from CSV/JSON), update, rm",
    columns=(
        Column("name", "name"),
        Column("index", "index"),
        Column("mac", "mac"),
        Column("ip", "ip"),
        Column("boot_config", "boot_config"),
        Column("groups", "groups"),
        Column("power", "power_uri"),
    ),
    options=(
        FieldOption("--index", "index", "index in the naming pool (the name is prefix + index)", metavar="N"),
        FieldOption("--mac", "mac", "MAC address", repeat=True, metavar="MAC"),
        FieldOption("--pool", "naming_pool", "naming pool (default: 'default')", metavar="POOL"),
        FieldOption("--ip", "ip", "explicit IPv4 address (default: derived from the pool)"),
        FieldOption("--boot-config", "boot_config", "boot config name", metavar="NAME"),
        FieldOption("--power-uri", "power_uri", "BMC, e.g. ipmi://admin@10.1.0.5:623", metavar="URI"),
        FieldOption("--power-password", "power_password", "BMC password (stored, never shown again)", metavar="PASSWORD"),
        FieldOption("--group", "groups", "group", repeat=True, metavar="GROUP"),
        FieldOption("--attribute", "attributes", "attribute KEY=VALUE", repeat=True, metavar="KEY=VALUE"),
        FieldOption("--description", "description", "free text"),
    ),
    verbs=("ls", "show", "update", "rm"),
    enrich=effective_ips,
    examples="""examples:
  cwboot nodes add --index 0 --mac 52:54:00:00:00:00 --boot-config compute
  cwboot nodes add --file nodes.csv          (CSV header: index,mac,boot_config,...)
  cwboot nodes ls n[0-15] --filter boot_config=compute
  cwboot nodes update n[0-3,7] --boot-config debug groups=gpu
  cwboot nodes rm n[100-199]""",
)


def _add(args: argparse.Namespace) -> int:
    single = {**parse_assignments("node", args.assignments), **NODES.fields_from_options(args)}
    if args.name:
        single["name"] = args.name
    if args.file is not None:
        if single:
            raise CliError("--file adds the nodes in the file; set their fields there, not on the command line")
        text = read_source(args.file)
        fmt = args.format or guess_format(args.file, text)
        docs = parse_objects("node", text, fmt, "stdin" if args.file == "-" else args.file)
        if not docs:
            raise CliError(f"{args.file}: no nodes in it")
        if args.batch < 1:
            raise CliError("--batch: expected a positive number of nodes")
        created: list[dict[str, Any]] = []
        with api_client(args) as client:
            for start in range(0, len(docs), args.batch):
                created += client.create_objects("node", docs[start : start + args.batch], minimal=not args.json)
        if args.json:
            print_json(created)
        else:
            print(f"added {len(created)} nodes: {fold_names(d['name'] for d in created)}")
        return 0
    if "index" not in single and "name" not in single:
        raise CliError("give --index (and --mac), or --file with many nodes")
    with api_client(args) as client:
        created_one = client.create_object("node", single)
        if args.json:
            print_json(created_one)
        else:
            NODES.print_rows(args, client, [created_one])
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = register_object_commands(subparsers, NODES)
    p = add_command(
        verbs,
        "add",
        _add,
        "add one node, or many from a CSV/JSON file in one request",
        epilog="FIELD may be any of: " + ", ".join(objects.fields_of("node")) + "\n\n" + NODES.examples,
    )
    p.add_argument("assignments", nargs="*", metavar="FIELD=VALUE", help="more fields of the one node")
    p.set_defaults(words_dest="assignments")
    p.add_argument("--name", help="explicit name (default: pool prefix + index)")
    p.add_argument("--file", metavar="PATH", help="add every node in PATH ('-' = stdin): CSV with a header row, or a JSON list")
    p.add_argument("--format", choices=FORMATS, help="format of --file (default: from its extension or content)")
    p.add_argument(
        "--batch", type=int, default=50_000, metavar="N",
        help="nodes per request with --file (default: 50000, ~3 MB; the API refuses bodies over api.max_body_bytes)",
    )
    NODES.add_field_options(p)
