"""The OpenAPI 3 document served at ``/api/v1/openapi.json``, generated from objects.KINDS.

Field schemas come from each field's checker in cwboot.control.objects (its
name says the JSON type; ``_int``/``_choice`` closures carry their bounds and
choices). Secret fields are ``writeOnly`` and reads show ``<field>_set``
instead; routes other modules register appear with their summary.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import cwboot
from cwboot.api.object_routes import API_PREFIX, collections
from cwboot.api.routing import Route
from cwboot.control import objects

# Checker function name -> JSON schema of the values it accepts.
_SCHEMA_BY_CHECKER: dict[str, dict[str, Any]] = {
    "_str": {"type": "string", "maxLength": 4096},
    "_object_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"},
    "_opt_ref": {"type": "string", "description": "name of another object, or empty"},
    "_int": {"type": "integer"},
    "_macs": {
        "type": "array",
        "items": {"type": "string", "example": "52:54:00:12:34:56"},
        "description": "MAC addresses (a single string is accepted too); unique across nodes",
    },
    "_ipv4": {"type": "string", "description": "IPv4 address, or empty to derive it from the naming pool"},
    "_network": {"type": "string", "example": "10.54.0.0/16"},
    "_power_uri": {"type": "string", "example": "ipmi://admin@bmc-host:623"},
    "_str_dict": {"type": "object", "additionalProperties": {"type": "string"}},
    "_str_list": {"type": "array", "items": {"type": "string"}},
    "_choice": {"type": "string"},
    "_json": {},
}


def field_schema(field: objects.Field) -> dict[str, Any]:
    checker = field.check.__qualname__.split(".")[0]
    schema = dict(_SCHEMA_BY_CHECKER.get(checker, {}))
    bound = inspect.getclosurevars(field.check).nonlocals
    if checker == "_int":
        schema.update(minimum=bound["lo"], maximum=bound["hi"])
    if checker == "_choice":
        schema["enum"] = list(bound["choices"])
    if field.default is not None and not field.read_only:
        schema["default"] = field.default
    if field.read_only:
        schema["readOnly"] = True
    if field.set_by:
        schema["readOnly"] = True
        schema["description"] = f"set by {field.set_by} (a mirror of the head's image store)"
    if field.secret:
        schema["writeOnly"] = True
    if field.immutable:
        schema["description"] = (schema.get("description", "") + " (cannot change)").strip()
    return schema


def kind_schema(kind: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, field in objects.fields_of(kind).items():
        props[name] = field_schema(field)
        if field.secret:
            props[f"{name}_set"] = {"type": "boolean", "readOnly": True, "description": f"whether {name} is set"}
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if kind != "node":
        schema["required"] = ["name"]
    return schema


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content({"$ref": "#/components/schemas/Error"})}


_COMMON_ERRORS = {
    "400": _error("invalid input: unknown field, bad value, invalid or too deeply nested JSON"),
    "401": _error("no token or an unknown token"),
    "403": _error("a read token on a write"),
    "413": _error("request body larger than api.max_body_bytes"),
}


def _object_operations(kind: str, filterable: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    ref = {"$ref": f"#/components/schemas/{kind}"}
    many = {"type": "array", "items": ref}
    collection = {
        "get": {
            "summary": f"List {kind} objects",
            "tags": [kind],
            "parameters": [
                {"name": f, "in": "query", "required": False, "schema": {"type": "string"}} for f in filterable
            ],
            "responses": {"200": {"description": "the objects", "content": _json_content(many)}, **_COMMON_ERRORS},
        },
        "post": {
            "summary": f"Create one {kind}, or many in one transaction batch (a JSON list)",
            "tags": [kind],
            "requestBody": {"required": True, "content": _json_content({"oneOf": [ref, many]})},
            "responses": {
                "201": {"description": "created (same shape as the request)", "content": _json_content({"oneOf": [ref, many]})},
                "409": _error("duplicate name or MAC"),
                **_COMMON_ERRORS,
            },
        },
    }
    one_param = [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}, "description": "uid or name"}]
    one = {
        "parameters": one_param,
        "get": {
            "summary": f"Get one {kind} by uid or name",
            "tags": [kind],
            "responses": {"200": {"description": "the object", "content": _json_content(ref)}, "404": _error("no such object"), **_COMMON_ERRORS},
        },
        "patch": {
            "summary": f"Change fields of one {kind}",
            "tags": [kind],
            "requestBody": {"required": True, "content": _json_content(ref)},
            "responses": {
                "200": {"description": "the changed object", "content": _json_content(ref)},
                "404": _error("no such object"),
                "409": _error("duplicate name or MAC, or changed concurrently"),
                **_COMMON_ERRORS,
            },
        },
        "delete": {
            "summary": f"Remove one {kind}",
            "tags": [kind],
            "responses": {"204": {"description": "removed"}, "404": _error("no such object"), **_COMMON_ERRORS},
        },
    }
    return collection, one


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.0 document for the object routes plus every other registered route."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    }
    object_paths: set[str] = set()
    for collection, kind in collections().items():
        schemas[kind] = kind_schema(kind)
        filterable = [n for n, f in objects.fields_of(kind).items() if not f.secret]
        base = f"{API_PREFIX}/{collection}"
        paths[base], paths[base + "/{ref}"] = _object_operations(kind, filterable)
        object_paths |= {base, base + "/{ref}"}
    for route in routes:
        if route.path in object_paths:
            continue
        op: dict[str, Any] = {
            "summary": route.summary or f"{route.method} {route.path}",
            "responses": {
                "200": {"description": "success", "content": _json_content(route.response_schema or {})},
                **_COMMON_ERRORS,
            },
        }
        if route.required_access == "public":
            op["security"] = []
        params = [s[1:-1] for s in route.segments if s.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cwboot REST API",
            "version": cwboot.__version__,
            "description": "Objects of a cwboot cluster. Send 'Authorization: Bearer <token>': "
            "admin tokens read and write, read tokens only read.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
