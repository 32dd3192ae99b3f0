"""Reading many objects from a file or stdin for bulk add: CSV with a header row, or JSON.

CSV: the header names fields of the kind; empty cells are left out (the
default applies); values are read as on the command line (lists split on
``;``/spaces inside a cell, maps as ``k=v;k2=v2``); lines starting with ``#``
are comments. JSON: a list of objects (or one object).

    name,index,mac,boot_config,groups
    ,0,52:54:00:00:00:00,compute,rack1
    ,1,52:54:00:00:00:01;52:54:00:00:01:01,compute,rack1;gpu
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from cwboot.cli.command import CliError
from cwboot.cli.object_commands import field_value

FORMATS = ("csv", "json")


def guess_format(path: str, text: str) -> str:
    """``csv`` or ``json`` from the file name's extension, else from the first character."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def read_source(path: str) -> str:
    """The text of ``path``; ``-`` reads stdin."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


def parse_objects(kind: str, text: str, fmt: str, source: str = "input") -> list[dict[str, Any]]:
    """The objects of kind ``kind`` written in ``text`` (``fmt``: csv or json)."""
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{source}: invalid JSON: {exc}") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise CliError(f"{source}: expected a JSON list of objects")
        return data
    if fmt != "csv":
        raise CliError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    lines = [line for line in io.StringIO(text) if not line.lstrip().startswith("#")]
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header:
        return []
    header = [h.strip() for h in header]
    docs = []
    for lineno, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise CliError(f"{source}: row {lineno} has {len(row)} cells, the header {len(header)}")
        try:
            docs.append({h: field_value(kind, h, cell.strip()) for h, cell in zip(header, row, strict=False) if cell.strip()})
        except CliError as exc:
            raise CliError(f"{source}: row {lineno}: {exc}") from None
    return docs
