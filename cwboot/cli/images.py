"""``cwboot images ls|show|rm``: published root filesystem images (in the spirit of scyld-imgctl).

Images are created by ``cwboot images import`` (cwboot/cli/image_ops.py);
this module lists, shows and removes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from cwboot.cli.object_commands import ObjectCommands, register_object_commands
from cwboot.cli.table import Column


def human_size(n: Any) -> str:
    """``1536`` -> ``1.5K``; not-a-number -> ``-``."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    size = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return "-"


def _latest_version(image: Mapping[str, Any]) -> Mapping[str, Any]:
    versions = image.get("versions") or []
    for v in versions:
        if isinstance(v, dict) and v.get("version") == image.get("latest"):
            return v
    return versions[-1] if versions and isinstance(versions[-1], dict) else {}


IMAGES = ObjectCommands(
    kind="image",
    command="images",
    help="root filesystem images: ls, show, import, versions, verify, rollback, remove, gc, add-file, rm",
    columns=(
        Column("name", "name"),
        Column("latest", "latest"),
        Column("versions", lambda d: len(d.get("versions") or [])),
        Column("size", lambda d: human_size(_latest_version(d).get("raw_size"))),
        Column("compressed", lambda d: human_size(_latest_version(d).get("compressed_size"))),
        Column("description", "description"),
    ),
    verbs=("ls", "show", "rm"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``images`` with ls/show/rm; image_ops adds its verbs with command.group_verbs(subparsers, "images")."""
    register_object_commands(subparsers, IMAGES)
