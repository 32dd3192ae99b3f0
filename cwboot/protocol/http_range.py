"""Sans-IO HTTP conditional and partial GET rules (RFC 9110 sections 13 and 14).

``decide(method, size, etag, range_header, if_none_match, if_range)`` returns what
to send for a static entity: 200 full, 206 one range, 304 not modified or 416
unsatisfiable. Only single ranges are honoured; a multi-range request gets the
whole entity (RFC 9110 section 14.2 allows ignoring Range), which is what boot
clients (curl -C, wget -c, iPXE) never ask for anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    # Bytes [start, stop) of the entity to send (empty for 304/416 and HEAD bodies).
    start: int = 0
    stop: int = 0
    # Extra response headers (Content-Range).
    headers: tuple[tuple[bytes, bytes], ...] = ()


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 section 13.1.2: weak comparison; ``*`` matches anything."""
    for candidate in if_none_match.split(b","):
        c = candidate.strip()
        if c == b"*" or c.removeprefix(b"W/") == etag.removeprefix(b"W/"):
            return True
    return False


def parse_range_untrusted(value: bytes, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> [start, stop); None if unsatisfiable.

    Raises ValueError when the header is not a single byte range (the caller
    then ignores it and sends the whole entity).
    """
    m = _RANGE_RE.match(value.decode("ascii", "replace").strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        raise ValueError("not a single byte range")
    first, last = m.group(1), m.group(2)
    if not first:
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and stop <= start:
        raise ValueError("last byte before first")  # RFC 9110 14.1.1: invalid, ignore
    if start >= size:
        return None
    return start, min(stop, size)


def decide(
    size: int,
    etag: bytes,
    *,
    range_header: bytes | None = None,
    if_none_match: bytes | None = None,
    if_range: bytes | None = None,
) -> Decision:
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return Decision(304)
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        try:
            rng = parse_range_untrusted(range_header, size)
        except ValueError:
            return Decision(200, 0, size)
        if rng is None:
            return Decision(416, headers=((b"content-range", f"bytes */{size}".encode()),))
        start, stop = rng
        content_range = f"bytes {start}-{stop - 1}/{size}".encode()
        return Decision(206, start, stop, ((b"content-range", content_range),))
    return Decision(200, 0, size)
