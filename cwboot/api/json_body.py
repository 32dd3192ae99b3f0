"""Decoding JSON request bodies from the network, bounded in depth without recursion.

``json.loads`` recurses once per nesting level, so a body like ``[[[[...]]]]``
could exhaust the C stack before any schema check runs. The depth is measured
first on the raw bytes: escape pairs are dropped, everything but quotes and brackets
is deleted, the strings left (quote, brackets, quote) are cut out, and the
remaining brackets are mapped to +1/-1; the running sum's maximum is the
depth. All in C loops, linear in the body, no Python recursion.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any


class BadJson(Exception):
    """The body is not acceptable JSON; the message says why."""

    status = 400


# Outside strings JSON has no backslashes, so dropping every escape pair removes the
# escaped quotes inside strings without touching the structure.
_ESCAPE_PAIR = re.compile(rb"\\.", re.DOTALL)
_KEEP_QUOTES_AND_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
# Once only quotes and brackets are left, a string is a quote, brackets, a quote.
_STRING_LEFTOVER = re.compile(rb'"[^"]*"')
_DEPTH_STEP = [0] * 256
for _b in b"[{":
    _DEPTH_STEP[_b] = 1
for _b in b"]}":
    _DEPTH_STEP[_b] = -1


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in ``body`` (0 for a scalar)."""
    if b"\\" in body:
        body = _ESCAPE_PAIR.sub(b"", body)
    skeleton = _STRING_LEFTOVER.sub(b"", body.translate(None, _KEEP_QUOTES_AND_BRACKETS))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, skeleton)), default=0)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_untrusted(body: bytes, max_depth: int) -> Any:
    """Parse ``body`` as JSON nested at most ``max_depth`` levels; raises only BadJson."""
    if not body.strip():
        raise BadJson("request body is empty: expected JSON")
    depth = json_depth(body)
    if depth > max_depth:
        raise BadJson(f"JSON is nested {depth} levels deep; at most {max_depth} are allowed")
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
        if b"\\u" in body:
            # "\ud800" parses into a lone surrogate that no UTF-8 writer accepts later.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError as exc:
        raise BadJson(f"invalid JSON text encoding: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"invalid JSON: {exc}") from None
    return value
