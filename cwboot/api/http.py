"""Requests and responses of the REST API: bounded body reads, JSON in and out, JSON errors.

A request body is read chunk by chunk from the ASGI ``receive`` and refused
with 413 as soon as it passes ``max_body_bytes`` (a ``Content-Length`` that
announces more is refused before reading anything), so no client can make the
head buffer more than the limit. Every error is an ``ApiError`` with an HTTP
status and a one-line message, sent as ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from cwboot.api.json_body import decode_json_untrusted

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# At most this many query parameters (parse_qsl's own bound).
MAX_QUERY_FIELDS = 100


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class ClientGone(Exception):
    """The client disconnected before its request body arrived; nothing is answered."""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Instead of ``body``: chunks sent as they come (chunked encoding), e.g. NDJSON lines.
    stream: AsyncIterator[bytes] | None = None


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, body, {"content-type": "application/json", **(headers or {})})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


def no_content() -> Response:
    return Response(204)


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    max_json_depth: int


class Request:
    """One HTTP request as route handlers see it.

    ``path_params`` holds the ``{name}`` parts of the route's path; ``query``
    the query parameters (a name given twice is a 400); ``role`` is
    ``"admin"``, ``"read"`` or ``None`` (public routes).
    """

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        limits: BodyLimits,
        path_params: Mapping[str, str] | None = None,
        role: str | None = None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self.limits = limits
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.path_params: dict[str, str] = dict(path_params or {})
        self.role = role
        self.headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._query: dict[str, str] | None = None
        self._body_done = False

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = parse_query_untrusted(self.scope.get("query_string", b""))
        return self._query

    async def body(self) -> bytes:
        """The whole body, refused with 413 as soon as it passes the limit."""
        limit = self.limits.max_body_bytes
        declared = self.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise ApiError(400, f"bad Content-Length {declared[:40]!r}")
            if int(declared) > limit:
                raise ApiError(413, f"request body of {declared} bytes is larger than the {limit}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"request body is larger than the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                self._body_done = True
                return b"".join(chunks)

    async def discard_body(self, max_bytes: int) -> None:
        """Read and drop what the client still sends, up to ``max_bytes``, without keeping it.

        Used before an early answer (413): a server that closes while the client is
        still sending makes the kernel reset the connection, and the client may lose
        the answer before reading it. Draining a bounded amount lets it arrive.
        """
        dropped = 0
        while not self._body_done and dropped <= max_bytes:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            dropped += len(message.get("body", b""))
            self._body_done = not message.get("more_body", False)

    async def json(self) -> Any:
        """The body decoded as JSON (400 for invalid or too deeply nested JSON)."""
        return decode_json_untrusted(await self.body(), self.limits.max_json_depth)


def parse_query_untrusted(raw: bytes) -> dict[str, str]:
    """``a=1&b=2`` -> ``{"a": "1", "b": "2"}``; a name given twice, or too many, is a 400."""
    try:
        pairs = parse_qsl(
            raw.decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=MAX_QUERY_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"bad query string: {exc}") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise ApiError(400, f"query parameter '{name}' given twice")
        out[name] = value
    return out


async def send_response(send: Send, response: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    if response.stream is not None:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
