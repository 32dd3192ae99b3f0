"""Output for people and for scripts: aligned tables, ``key: value`` blocks, JSON.

Every listing command calls ``emit(args, data, columns)``: a table by default,
the raw JSON with ``--json``. Cells format lists as ``a,b``, dicts as
``k=v,k2=v2`` and empty values as ``-``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Column:
    """A table column: its header and the field name or function that gives the cell value."""

    header: str
    value: str | Callable[[Mapping[str, Any]], Any]

    def cell(self, row: Mapping[str, Any]) -> str:
        v = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        return format_cell(v)


def format_cell(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(format_cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={format_cell(v)}" for k, v in value.items())
    return str(value)


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], out: TextIO | None = None) -> None:
    """Aligned columns, headers in capitals, two spaces apart; the last column is not padded."""
    out = out or sys.stdout
    cells = [[c.header.upper() for c in columns]]
    cells += [[c.cell(row) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        line = "  ".join(v.ljust(w) for v, w in zip(r[:-1], widths[:-1], strict=True))
        out.write((line + "  " + r[-1] if len(r) > 1 else r[-1]).rstrip() + "\n")


def print_fields(doc: Mapping[str, Any], out: TextIO | None = None) -> None:
    """One object as ``key: value`` lines, keys aligned."""
    out = out or sys.stdout
    width = max((len(k) for k in doc), default=0)
    for key, value in doc.items():
        out.write(f"{key.ljust(width)}  {format_cell(value)}\n")


def print_json(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def emit(args: argparse.Namespace, data: Any, columns: Sequence[Column]) -> None:
    """``data`` (a list of objects) as JSON with ``--json``, else as a table."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        print_table(data, columns)
