"""``cwboot stats``: what the head's services counted since it started (GET /api/v1/stats).

A table of (service, counter, value) by default. A counter kept by name (DHCP
replies by type, HTTP responses by status, drops by reason) shows its total,
then one indented row per name, largest first. ``--json`` prints the API's answer as it is.
A read token is enough.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from cwboot.api.object_routes import API_PREFIX
from cwboot.cli.client import api_client
from cwboot.cli.command import CliError, add_command
from cwboot.cli.table import Column, emit

COLUMNS = (Column("service", "service"), Column("counter", "counter"), Column("value", "value"))


def duration(seconds: float) -> str:
    """``3725.2`` -> ``1h 2m 5s`` (whole seconds; zero parts left out)."""
    left, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts)


def stats_rows(answer: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of the table for one answer of GET /api/v1/stats."""
    yield {"service": "head", "counter": "name", "value": answer["head"]}
    yield {"service": "head", "counter": "uptime", "value": duration(answer["uptime"])}
    for service, counters in answer["services"].items():
        for name, value in counters.items():
            if isinstance(value, dict):
                yield {"service": service, "counter": name, "value": sum(value.values())}
                for key, count in sorted(value.items(), key=lambda kv: (-kv[1], kv[0])):
                    yield {"service": service, "counter": f"  {key}", "value": count}
            else:
                yield {"service": service, "counter": name, "value": value}


def _stats(args: argparse.Namespace) -> int:
    with api_client(args) as client:
        answer = client.request("GET", f"{API_PREFIX}/stats")
    if getattr(args, "json", False):
        emit(args, answer, COLUMNS)
        return 0
    try:
        rows = list(stats_rows(answer))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CliError(f"unexpected answer from GET {API_PREFIX}/stats (missing {exc})") from None
    emit(args, rows, COLUMNS)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_command(
        subparsers,
        "stats",
        _stats,
        "counters of the head's services: requests, replies, bytes, drops by reason",
        description="What the head's services counted since it started (GET /api/v1/stats).\n\n"
        "A table of SERVICE, COUNTER, VALUE. A counter kept by name (DHCP replies by type,\n"
        "HTTP responses by status, TFTP outcomes, drops by reason) shows its total, then one\n"
        "indented row per name, largest first. --json prints the API's answer unchanged.\n"
        "A read token is enough.",
    )
