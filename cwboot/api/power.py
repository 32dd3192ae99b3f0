"""REST endpoints for power control: ``POST /api/v1/power/{op}``.

    POST /api/v1/power/on       {"nodes": ["n[0-99]", "n120"], "bootdev": "pxe"}
    POST /api/v1/power/status   {"nodes": "n[0-999]"}
    POST /api/v1/power/bootdev  {"nodes": ["n7"], "bootdev": "disk", "persistent": true}

``op`` is one of status, on, off, soft, cycle, reset, bootdev. ``nodes`` is a
node range expression or a list of them (``n[0-3,7]``, as the CLI takes).
The answer, once every node has a result (each within ``power.timeout``
seconds of its turn, see cwboot.control.power.service):

    200 {"op": "on", "ok": 98, "failed": 2,
         "results": [{"node": "n3", "op": "on", "ok": true, "state": "on", "attempts": 1, "elapsed": 0.02},
                     {"node": "n9", "op": "on", "ok": false, "error": "login refused: wrong user name or password", ...}]}

``results`` is in completion order. A node that fails is a result with
``ok: false`` and an ``error``, never an HTTP error: only a malformed request
is (400).

Streamed instead (``Accept: application/x-ndjson`` or ``?stream=1``): a 200
with ``Content-Type: application/x-ndjson`` whose body is one result object a
line, each sent the moment its node finishes; the body ends (chunked
encoding's last chunk) after the last node. A malformed request is still a
plain 400 before anything is streamed. Every op needs an admin token, status included (it logs in to BMCs
with their credentials). Register with ``create_app(..., extra_routes=power_routes(service))``.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from cwboot.api.http import ApiError, Request, Response, json_response
from cwboot.api.object_routes import API_PREFIX
from cwboot.api.routing import Route
from cwboot.cli.noderange import NodeRangeError, expand_all
from cwboot.control.power import OPS, PowerError, PowerRequest, PowerResult, PowerService

# Most nodes one request may name.
MAX_NODES = 100_000
NDJSON = "application/x-ndjson"


def power_request_untrusted(op: str, body: Any) -> tuple[list[str], PowerRequest]:
    """A request body -> (node names, PowerRequest); ApiError(400) naming what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object like {"nodes": ["n[0-9]"]}')
    unknown = set(body) - {"nodes", "bootdev", "persistent"}
    if unknown:
        raise ApiError(
            400, f"unknown field '{sorted(unknown)[0]}': expected nodes, bootdev, persistent"
        )
    nodes = body.get("nodes")
    if isinstance(nodes, str):
        nodes = [nodes]
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ApiError(400, "field 'nodes': expected a node range or a non-empty list of them")
    try:
        names = expand_all(nodes)
    except NodeRangeError as exc:
        raise ApiError(400, f"field 'nodes': {exc}") from None
    if len(names) > MAX_NODES:
        raise ApiError(400, f"field 'nodes': more than {MAX_NODES} nodes in one request")
    bootdev, persistent = body.get("bootdev", ""), body.get("persistent", False)
    if not isinstance(bootdev, str) or not isinstance(persistent, bool):
        raise ApiError(
            400, "fields 'bootdev' (string) and 'persistent' (boolean) have the wrong type"
        )
    try:
        return names, PowerRequest(op, bootdev=bootdev, persistent=persistent)
    except PowerError as exc:
        raise ApiError(400, str(exc)) from None


def wants_stream_untrusted(request: Request) -> bool:
    """Whether the client asked for NDJSON: ``?stream=1`` or an Accept header naming it."""
    flag = request.query.get("stream")
    if flag is not None and flag not in ("0", "1"):
        raise ApiError(400, f"query parameter 'stream': expected 0 or 1, not {flag[:20]!r}")
    if flag is not None:
        return flag == "1"
    accept = request.headers.get("accept", "").lower()
    return any(part.split(";")[0].strip() == NDJSON for part in accept.split(","))


class _ResultLines:
    """The power results as NDJSON lines, each as soon as its node has finished."""

    def __init__(self, results: trio.MemoryReceiveChannel[PowerResult]) -> None:
        self.results = results

    def __aiter__(self) -> _ResultLines:
        return self

    async def __anext__(self) -> bytes:
        try:
            result = await self.results.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.results.close()
            raise StopAsyncIteration from None
        return json.dumps(result.to_json(), separators=(",", ":")).encode() + b"\n"


class PowerHandlers:
    def __init__(self, service: PowerService) -> None:
        self.service = service

    async def run(self, request: Request) -> Response:
        op = request.path_params["op"]
        if op not in OPS:
            raise ApiError(404, f"unknown power operation {op!r}: expected one of {', '.join(OPS)}")
        names, power_request = power_request_untrusted(op, await request.json())
        if wants_stream_untrusted(request):
            lines = _ResultLines(self.service.submit(names, power_request))
            return Response(200, headers={"content-type": NDJSON}, stream=lines)
        results = [r.to_json() for r in await self.service.run(names, power_request)]
        ok = sum(1 for r in results if r["ok"])
        return json_response({"op": op, "ok": ok, "failed": len(results) - ok, "results": results})


def power_routes(service: PowerService) -> list[Route]:
    """The power endpoints, to pass to ``create_app(extra_routes=...)``."""
    handlers = PowerHandlers(service)
    return [
        Route(
            "POST",
            f"{API_PREFIX}/power/{{op}}",
            handlers.run,
            access="admin",
            summary="Power operation on nodes: status, on, off, soft, cycle, reset, bootdev (per-node results; NDJSON stream with ?stream=1 or Accept: application/x-ndjson)",
        )
    ]
