"""A tiny router: ``Route(method, "/api/v1/things/{ref}", handler)`` and a path matcher.

Paths are split on ``/``; a ``{name}`` segment matches any one non-empty
segment and lands in ``request.path_params[name]``. When several routes match
a path, the one with the most literal segments wins for its method, so
``POST /api/v1/nodes/enrol`` and ``GET /api/v1/nodes/{ref}`` can live side by
side. A path that matches no route is a 404; a path that matches only for
other methods is a 405 with an ``Allow`` header.

Access levels: ``"public"`` (no token; only the health check), ``"read"`` (read
or admin token), ``"admin"`` (admin token). Left as ``None``, a route's access
follows its method: GET reads, everything else writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from cwboot.api.http import ApiError, Request, Response

Handler = Callable[[Request], Awaitable[Response]]
Access = Literal["public", "read", "admin"]
ACCESS_LEVELS = ("public", "read", "admin")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Route:
    """One endpoint. ``summary`` is its one-line description in the OpenAPI document,
    ``response_schema`` the JSON schema of its 200 answer there (None: any JSON)."""

    method: str
    path: str
    handler: Handler
    access: Access | None = None
    summary: str = ""
    response_schema: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"route {self.path}: method {self.method!r} is not one of {METHODS}")
        if not self.path.startswith("/") or self.path != normalize_path(self.path):
            raise ValueError(f"route path {self.path!r} must start with '/' and not end with one")
        if self.access is not None and self.access not in ACCESS_LEVELS:
            raise ValueError(f"route {self.path}: access {self.access!r} is not one of {ACCESS_LEVELS}")

    @property
    def required_access(self) -> Access:
        if self.access is not None:
            return self.access
        return "read" if self.method == "GET" else "admin"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))


def normalize_path(path: str) -> str:
    """``/api/v1/nodes/`` -> ``/api/v1/nodes`` (a trailing slash is accepted everywhere)."""
    return "/" + path.strip("/") if path != "/" else path


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


class Router:
    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: list[Route] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Register ``route``; the same method on the same path shape twice is an error."""
        shape = tuple("{}" if _is_param(s) else s for s in route.segments)
        for other in self.routes:
            if other.method == route.method and shape == tuple(
                "{}" if _is_param(s) else s for s in other.segments
            ):
                raise ValueError(f"route {route.method} {route.path} is already registered ({other.path})")
        self.routes.append(route)

    def match(self, method: str, path: str) -> Match:
        """The route for ``method`` on ``path``; ApiError 404 or 405 otherwise."""
        parts = normalize_path(path).strip("/").split("/")
        candidates: list[tuple[int, Route, dict[str, str]]] = []
        for route in self.routes:
            params = _match_segments(route.segments, parts)
            if params is not None:
                literal = sum(not _is_param(s) for s in route.segments)
                candidates.append((literal, route, params))
        if not candidates:
            raise ApiError(404, f"no such endpoint: {path[:200]}")
        for _, route, params in sorted(candidates, key=lambda c: -c[0]):
            if route.method == method:
                return Match(route, params)
        allowed = sorted({route.method for _, route, _ in candidates})
        raise ApiError(
            405,
            f"method {method[:20]} is not allowed on {path[:200]}; allowed: {', '.join(allowed)}",
            {"allow": ", ".join(allowed)},
        )


def _match_segments(pattern: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, parts, strict=True):
        if _is_param(want):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params
