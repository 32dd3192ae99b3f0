"""CRUD routes for every object kind in cwboot.control.objects.KINDS.

Each kind has a collection under ``/api/v1/``: its name plus "s"
(``nodes``, ``boot_configs``, ``images``, ``naming_pools``, ``heads``), except
``status``, which is already a collection noun.

    GET    /api/v1/<collection>?field=value...   list, filtered by fields
    POST   /api/v1/<collection>                  create one (JSON object) or many (JSON list)
    GET    /api/v1/<collection>/<uid or name>    one object
    PATCH  /api/v1/<collection>/<uid or name>    change some fields
    DELETE /api/v1/<collection>/<uid or name>    remove (204)

Writes refuse the fields cwboot mirrors from elsewhere (``Field.set_by``: an
image's ``versions``/``latest`` come from the head's image store) with a 400
naming the command that sets them; ``Objects`` itself still writes them, for
``ImageStore.sync_objects``.

Reads pass every document through ``objects.redact``: a secret field such as
``power_password`` comes back only as ``power_password_set: true/false``, and
secrets cannot be used as list filters (that would let readers guess them).
"""

from __future__ import annotations

from typing import Any

from cwboot.api.http import ApiError, Request, Response, json_response, no_content
from cwboot.api.routing import Route
from cwboot.control import objects
from cwboot.control.repo import Objects

API_PREFIX = "/api/v1"
# Kinds whose collection is not simply kind + "s".
_IRREGULAR_COLLECTIONS = {"status": "status"}


def collection_of(kind: str) -> str:
    """``node`` -> ``nodes``: the path segment of a kind's collection."""
    return _IRREGULAR_COLLECTIONS.get(kind, kind + "s")


def collections() -> dict[str, str]:
    """Collection path segment -> kind, for every kind in objects.KINDS."""
    return {collection_of(kind): kind for kind in objects.KINDS}


def list_filters(kind: str, query: dict[str, str]) -> dict[str, str]:
    """Query parameters -> filters for Objects.list (``field=value``, ``attributes.<key>=value``).

    The repository checks them in full; the API refuses secret fields itself too,
    so no change there can turn a filter into a password oracle.
    """
    spec = objects.fields_of(kind)
    for name in query:
        field = spec.get(name.partition(".")[0])
        if field is None:
            raise ApiError(400, f"unknown filter '{name}' for kind {kind}: expected one of {', '.join(spec)}")
        if field.secret:
            raise ApiError(400, f"field '{name}' is secret and cannot be used as a filter")
    return query


class ObjectHandlers:
    """The five handlers of one kind's collection, bound to an Objects repository."""

    def __init__(self, repo: Objects, kind: str) -> None:
        self.repo = repo
        self.kind = kind
        self.mirrored = {key for key, f in objects.fields_of(kind).items() if f.set_by}

    def _out(self, doc: dict[str, Any]) -> dict[str, Any]:
        return objects.redact(self.kind, doc)

    async def list(self, request: Request) -> Response:
        filters = list_filters(self.kind, request.query)
        docs = await self.repo.list(self.kind, filters or None)
        return json_response([self._out(d) for d in docs])

    async def create(self, request: Request) -> Response:
        """201 with the new object(s); with ``Prefer: return=minimal`` (RFC 7240) only their
        uid and name, which keeps the answer to a 10,000-node bulk add small."""
        body = await request.json()
        minimal = "return=minimal" in request.headers.get("prefer", "").replace(" ", "")
        out = _minimal if minimal else self._out
        headers = {"preference-applied": "return=minimal"} if minimal else None
        if isinstance(body, list):
            for i, item in enumerate(body):
                if not isinstance(item, dict):
                    raise ApiError(400, f"item {i} of the list: expected a JSON object")
                if self.mirrored & item.keys():
                    try:
                        objects.without_mirrored_fields(self.kind, item)
                    except objects.InvalidObject as exc:
                        raise ApiError(400, f"item {i} of the list: {exc}") from None
            created = await self.repo.create_many(self.kind, body) if body else []
            return json_response([out(d) for d in created], 201, headers)
        if not isinstance(body, dict):
            raise ApiError(400, "expected a JSON object (one new object) or a list of them")
        body = objects.without_mirrored_fields(self.kind, body)
        return json_response(out(await self.repo.create(self.kind, body)), 201, headers)

    async def get(self, request: Request) -> Response:
        return json_response(self._out(await self.repo.get(self.kind, request.path_params["ref"])))

    async def update(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "expected a JSON object with the fields to change")
        ref = request.path_params["ref"]
        if self.mirrored & body.keys():
            # Only then is the current document needed (an unchanged echo is dropped).
            body = objects.without_mirrored_fields(self.kind, body, await self.repo.get(self.kind, ref))
        doc = await self.repo.update(self.kind, ref, body)
        return json_response(self._out(doc))

    async def delete(self, request: Request) -> Response:
        await self.repo.delete(self.kind, request.path_params["ref"])
        return no_content()


def _minimal(doc: dict[str, Any]) -> dict[str, Any]:
    return {"uid": doc["uid"], "name": doc.get("name", "")}


def object_routes(repo: Objects) -> list[Route]:
    """The CRUD routes of every kind."""
    routes: list[Route] = []
    for collection, kind in collections().items():
        h = ObjectHandlers(repo, kind)
        base = f"{API_PREFIX}/{collection}"
        one = f"{base}/{{ref}}"
        routes += [
            Route("GET", base, h.list, summary=f"List {kind} objects (query parameters filter by field)"),
            Route("POST", base, h.create, summary=f"Create one {kind} (object) or many (list)"),
            Route("GET", one, h.get, summary=f"Get one {kind} by uid or name"),
            Route("PATCH", one, h.update, summary=f"Change fields of one {kind}"),
            Route("DELETE", one, h.delete, summary=f"Remove one {kind}"),
        ]
    return routes
