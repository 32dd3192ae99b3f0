"""HTTP/1.1 for the boot engine, sans-IO: request heads and bodies in, response heads out.

The boot engine answers a small, fixed vocabulary — ``GET``/``HEAD`` of
scripts, files and chunks, ``POST`` of a status report — to clients that are
iPXE, busybox wget, curl and cwboot's own mount_rootfs. In a boot storm it
parses tens of thousands of request heads a second, and a general-purpose
state machine (h11) was the largest single cost of the engine's loop. This
module parses exactly RFC 9112's message grammar for requests, strictly, and
nothing more:

* request-line ``token SP request-target SP HTTP/1.x``; header fields
  ``token ":" OWS value OWS``, values without control characters; a line
  ending is CRLF or a bare LF (RFC 9112 §2.2); empty lines before the
  request-line are skipped (§2.2); obs-fold, a space before the colon, a
  missing ``Host`` in HTTP/1.1 or more than one (§3.2), conflicting or malformed
  ``Content-Length``, ``Transfer-Encoding`` other than ``chunked``, and both
  framing headers together (§6.3) are refused with :class:`BadRequest`;
* bodies: ``Content-Length`` or ``chunked`` (extensions ignored, trailers
  read and dropped), bounded by the caller;
* persistence (§9.3): HTTP/1.1 keeps the connection unless ``Connection:
  close``; HTTP/1.0 closes it (as h11 does).

Everything here is pure: ``parse_head_untrusted`` and ``parse_chunked_untrusted``
return None while more bytes are needed, the parsed value and the bytes used
otherwise, and raise only :class:`BadRequest`. tests/protocol/test_http1.py
runs it against h11 as the reference on generated requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024  # request-line + header fields; beyond it: 431

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(rb"\r?\n")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r?\n")


class BadRequest(Exception):
    """A request that is not HTTP/1.1 as RFC 9112 writes it; ``status`` is the answer to give."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    http_version: bytes  # b"1.1" or b"1.0"
    headers: dict[bytes, bytes]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool
    content_length: int  # 0 when there is no body
    chunked: bool


def parse_head_untrusted(buf: bytes | bytearray) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``buf`` and the bytes it used; None: incomplete."""
    start = 0
    while buf.startswith(b"\r\n", start) or buf.startswith(b"\n", start):
        start += 2 if buf[start] == 13 else 1
    m = _END_OF_HEAD.search(buf, start)
    if m is None:
        if len(buf) - start > MAX_HEAD:
            raise BadRequest("request head too large", 431)
        return None
    if m.start() - start > MAX_HEAD:
        raise BadRequest("request head too large", 431)
    lines = _LINE.split(bytes(buf[start : m.start()]))
    rl = _REQUEST_LINE.fullmatch(lines[0])
    if rl is None:
        raise BadRequest("malformed request line")
    method, target, minor = rl.groups()
    headers: dict[bytes, bytes] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if f is None:
            raise BadRequest("malformed header field")
        name, value = f.group(1).lower(), f.group(2)
        if name == b"content-length":
            for v in value.split(b","):
                lengths.add(v.strip(b" \t"))
        if name in headers:
            if name == b"host":
                raise BadRequest("more than one Host header")  # RFC 9112 section 3.2
            headers[name] += b", " + value
        else:
            headers[name] = value
    version = b"1." + minor
    if version == b"1.1" and b"host" not in headers:
        raise BadRequest("missing Host header")
    content_length = 0
    chunked = False
    te = headers.get(b"transfer-encoding")
    if te is not None:
        if lengths:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        if version == b"1.0" or te.strip(b" \t").lower() != b"chunked":
            raise BadRequest("unsupported transfer-encoding", 501)
        chunked = True
    elif lengths:
        if len(lengths) != 1:
            raise BadRequest("conflicting Content-Length")
        (only,) = lengths
        if not _DIGITS.fullmatch(only):
            raise BadRequest("malformed Content-Length")
        content_length = int(only)
    connection = headers.get(b"connection", b"").lower()
    keep_alive = version == b"1.1" and not any(
        t.strip(b" \t") == b"close" for t in connection.split(b",")
    )
    return RequestHead(method, target, version, headers, keep_alive, content_length, chunked), m.end()


def parse_chunked_untrusted(buf: bytes | bytearray, limit: int) -> tuple[bytes, int] | None:
    """A whole chunked body at the start of ``buf`` (data, bytes used); None: incomplete.

    ``limit`` bounds the decoded size: beyond it, :class:`BadRequest` with 413.
    """
    data = bytearray()
    pos = 0
    while True:
        m = _CHUNK_SIZE.match(buf, pos)
        if m is None:
            if len(buf) - pos > 1024 or _LINE.search(buf, pos):
                raise BadRequest("malformed chunk size line")
            return None
        size = int(m.group(1), 16)
        pos = m.end()
        if size == 0:
            break
        if len(data) + size > limit:
            raise BadRequest("request body too large", 413)
        end = pos + size
        if len(buf) < end + 2:
            return None
        data += buf[pos:end]
        if buf.startswith(b"\r\n", end):
            pos = end + 2
        elif buf.startswith(b"\n", end):
            pos = end + 1
        else:
            raise BadRequest("malformed chunk")
    while True:  # trailer fields, then the empty line
        m = _LINE.search(buf, pos)
        if m is None:
            if len(buf) - pos > MAX_HEAD:
                raise BadRequest("trailer too large", 431)
            return None
        line = bytes(buf[pos : m.start()])
        pos = m.end()
        if not line:
            return bytes(data), pos
        if _FIELD.fullmatch(line) is None:
            raise BadRequest("malformed trailer field")


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """``HTTP/1.1 status reason`` and the given fields (the engine's own, trusted), then the blank line."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts += [b"%s: %s\r\n" % field for field in headers]
    parts.append(b"\r\n")
    return b"".join(parts)
