"""``GET /api/v1/stats``: what this head's services counted since it started (read token).

    200 {"head": "h1", "started": 1767225600.0, "uptime": 3512.4,
         "services": {
           "dhcp": {"received": 2051, "replied": {"offer": 1000, "ack": 1000}, "drops": {"bad packet: ...": 3}, ...},
           "http": {"requests": 9120, "responses": {"200": 9100, "404": 20}, "bytes_sent": ..., "active_streams": 4, ...},
           "tftp": {"pid": 4242, "report_age": 0.4, "requests": 2000, "outcomes": {"completed": 1000, ...}, "drops": {}, ...},
           "power": {"operations": 16, "in_flight": 0, "timeouts": 0, ...}}}

Only services that run appear. Every service names its drops by reason ``drops``.
The counters come from a callable the head passes in (``cwboot.head.head_stats``),
so this layer knows nothing of the services; see docs/api.md for every field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cwboot.api.http import Request, Response, json_response
from cwboot.api.object_routes import API_PREFIX
from cwboot.api.routing import Route

StatsSource = Callable[[], dict[str, Any]]

STATS_PATH = f"{API_PREFIX}/stats"

_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}

# The answer's shape, for the OpenAPI document.
STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["head", "started", "uptime", "services"],
    "properties": {
        "head": {"type": "string", "description": "this head's name"},
        "started": {"type": "number", "description": "when this head started (seconds since the epoch)"},
        "uptime": {"type": "number", "description": "seconds since this head started"},
        "services": {
            "type": "object",
            "description": "counters since start, by service (dhcp, http, tftp, power); only running services",
            "additionalProperties": {
                "type": "object",
                "properties": {"drops": {**_COUNTS, "description": "dropped or refused, by reason"}},
                "additionalProperties": {"description": "a count, or counts by name (type, status, outcome)"},
            },
        },
    },
}


def stats_routes(collect: StatsSource) -> list[Route]:
    """The stats endpoint, answering ``collect()``; pass to ``create_app(extra_routes=...)``."""

    async def stats(request: Request) -> Response:
        return json_response(collect())

    return [
        Route(
            "GET",
            STATS_PATH,
            stats,
            access="read",
            summary="Counters of this head's services since start: requests, replies, bytes, drops by reason",
            response_schema=STATS_SCHEMA,
        )
    ]
