"""``cwboot status ls|show``: what each node last reported (boot stage, last seen, head)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cwboot.cli.object_commands import ObjectCommands, register_object_commands
from cwboot.cli.table import Column


def age(timestamp: Any, now: float | None = None) -> str:
    """Seconds since ``timestamp`` as ``42s``/``7m``/``3h``/``2d``; ``-`` if unknown."""
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or timestamp <= 0:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


STATUS = ObjectCommands(
    kind="status",
    command="status",
    help="node status (boot stage, last seen, head): ls, show",
    columns=(
        Column("name", "name"),
        Column("stage", "stage"),
        Column("head", "head"),
        Column("mac", "mac"),
        Column("last_seen", lambda d: age(d.get("last_seen"))),
    ),
    verbs=("ls", "show"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register_object_commands(subparsers, STATUS)
