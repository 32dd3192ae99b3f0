"""The ASGI application of the REST API: routing, authentication, errors as JSON.

Order of checks for a request: a public route (``GET /api/v1/health``, ``GET /dashboard``)
answers at once; otherwise the bearer token must be known (401), the path must
exist (404) and allow the method (405), and a write needs an admin token
(403). Handlers raise ``ApiError`` or the object layer's errors
(InvalidObject 400, NotFound 404, Conflict 409); anything else is logged and
answered with a bare 500, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import trio

from cwboot.api.auth import Tokens, bearer_token, tokens_from_config
from cwboot.api.dashboard import dashboard_routes
from cwboot.api.http import (
    ApiError,
    BodyLimits,
    ClientGone,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    error_response,
    json_response,
    send_response,
)
from cwboot.api.json_body import BadJson
from cwboot.api.object_routes import API_PREFIX, object_routes
from cwboot.api.openapi import openapi_document
from cwboot.api.routing import Route, Router
from cwboot.config import ApiConfig, Config
from cwboot.control.objects import ObjectError
from cwboot.control.repo import Objects
from cwboot.control.store.base import RevisionMismatch, StoreUnavailable

log = logging.getLogger(__name__)

# Before a 413, read and drop at most max_body_bytes more for at most this long.
DRAIN_SECONDS = 2.0

HEALTH_PATH = f"{API_PREFIX}/health"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
_UNAUTHORIZED = {"www-authenticate": 'Bearer realm="cwboot"'}


class ApiApp:
    """ASGI 3 app. ``add_route`` registers more endpoints (see docs/api.md)."""

    def __init__(self, router: Router, tokens: Tokens, limits: BodyLimits) -> None:
        self.router = router
        self.tokens = tokens
        self.limits = limits
        self.router.add(Route("GET", HEALTH_PATH, self._health, access="public", summary="Liveness (no token)"))
        self.router.add(Route("GET", OPENAPI_PATH, self._openapi, summary="This OpenAPI document"))
        self._openapi_cache: dict[str, Any] | None = None

    def add_route(self, route: Route) -> None:
        self.router.add(route)
        self._openapi_cache = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served; the server closes the connection
        request = Request(scope, receive, self.limits)
        try:
            response = await self._dispatch(request)
        except ClientGone:
            return
        if response.status == 413:
            # Hypercorn closes the connection as soon as the answer is sent; a client
            # still sending would then get a reset instead of the 413. Read and drop a
            # bounded amount first (nothing is kept), then answer and close.
            with trio.move_on_after(DRAIN_SECONDS):
                await request.discard_body(self.limits.max_body_bytes)
            response.headers["connection"] = "close"
        await send_response(send, response)

    async def _dispatch(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except (ObjectError, BadJson) as exc:
            return error_response(exc.status, str(exc))
        except RevisionMismatch:
            return error_response(409, "the object changed concurrently; retry")
        except StoreUnavailable as exc:
            return error_response(503, f"store unavailable: {exc}")
        except ClientGone:
            raise
        except Exception:
            log.exception("API %s %s failed", request.method, request.path[:200])
            return error_response(500, "internal error (logged on the head node)")

    async def _route(self, request: Request) -> Response:
        try:
            match = self.router.match(request.method, request.path)
        except ApiError:
            match = None
        if match is not None and match.route.required_access == "public":
            request.path_params = match.params
            return await match.route.handler(request)
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise ApiError(401, "missing token: send 'Authorization: Bearer <token>'", _UNAUTHORIZED)
        role = self.tokens.role_of(token)
        if role is None:
            raise ApiError(401, "unknown token", _UNAUTHORIZED)
        if match is None:
            match = self.router.match(request.method, request.path)  # raises the 404 or 405
        if match.route.required_access == "admin" and role != "admin":
            raise ApiError(403, f"{request.method} {match.route.path} needs an admin token; this is a read token")
        request.path_params = match.params
        request.role = role
        return await match.route.handler(request)

    async def _health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def _openapi(self, request: Request) -> Response:
        if self._openapi_cache is None:
            # The document describes the API under /api/v1, not the dashboard page.
            self._openapi_cache = openapi_document(r for r in self.router.routes if r.path.startswith(API_PREFIX))
        return json_response(self._openapi_cache)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(
    objects: Objects,
    config: Config | ApiConfig,
    extra_routes: Iterable[Route] = (),
    *,
    tokens: Tokens | None = None,
) -> ApiApp:
    """The REST API over ``objects``: CRUD for every kind, health, OpenAPI, plus ``extra_routes``.

    ``config`` is the whole Config (the admin token file defaults to
    ``<state_dir>/admin.token`` and is created if missing) or just its
    ApiConfig. ``tokens`` replaces the tokens the config names.
    """
    api = config.api if isinstance(config, Config) else config
    limits = BodyLimits(api.max_body_bytes, api.max_json_depth)
    app = ApiApp(Router([*object_routes(objects), *dashboard_routes()]), tokens or tokens_from_config(config), limits)
    for route in extra_routes:
        app.add_route(route)
    return app
