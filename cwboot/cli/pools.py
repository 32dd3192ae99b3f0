"""``cwboot pools ls|show|add|update|rm``: naming pools (node names and derived IPs)."""

from __future__ import annotations

import argparse

from cwboot.cli.object_commands import FieldOption, ObjectCommands, register_object_commands
from cwboot.cli.table import Column

POOLS = ObjectCommands(
    kind="naming_pool",
    command="pools",
    help="naming pools (node name prefix, IP network): ls, show, add, update, rm",
    columns=(
        Column("name", "name"),
        Column("prefix", "prefix"),
        Column("first_index", "first_index"),
        Column("network", "network"),
        Column("ip_offset", "ip_offset"),
        Column("next_index", "next_index"),
    ),
    options=(
        FieldOption("--prefix", "prefix", "node name prefix (names are prefix + index)"),
        FieldOption("--first-index", "first_index", "first index handed out", metavar="N"),
        FieldOption("--network", "network", "IPv4 network of the nodes, e.g. 10.54.0.0/16", metavar="CIDR"),
        FieldOption("--ip-offset", "ip_offset", "node IP = network address + offset + index", metavar="N"),
        FieldOption("--description", "description", "free text"),
    ),
    examples="""examples:
  cwboot pools add default --prefix n --network 10.54.0.0/16 --ip-offset 100
  cwboot pools update default --ip-offset 200""",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register_object_commands(subparsers, POOLS)
