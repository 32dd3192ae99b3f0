"""``cwboot heads ls|show``: the head nodes registered in the store (live ones hold a lease)."""

from __future__ import annotations

import argparse

from cwboot.cli.object_commands import ObjectCommands, register_object_commands
from cwboot.cli.table import Column

HEADS = ObjectCommands(
    kind="head",
    command="heads",
    help="registered head nodes: ls, show",
    columns=(
        Column("name", "name"),
        Column("addresses", "addresses"),
        Column("api", "api_url"),
        Column("http", "http_url"),
    ),
    verbs=("ls", "show"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register_object_commands(subparsers, HEADS)
