"""The boot engine's HTTP/1.1 request parser (cwboot.protocol.http1), with h11 as the reference.

A table of what real boot clients send (iPXE, busybox wget, curl, the storm's
client), a table of malformed heads, each with the status it must get, and a
Hypothesis differential: for generated request heads inside the grammar both
implement, cwboot's parser accepts exactly when h11 (the parser the engine
used before, and the one hypercorn runs for the API) accepts, and reads the
same method, target, version, fields and persistence.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwboot.protocol.http1 import (
    MAX_HEAD,
    BadRequest,
    parse_chunked_untrusted,
    parse_head_untrusted,
    response_head,
)

IPXE = (
    b"GET /boot/ipxe/52-54-00-12-34-56 HTTP/1.1\r\nConnection: keep-alive\r\n"
    b"User-Agent: iPXE/1.21.1+ (g988d2)\r\nHost: 10.0.0.1:8080\r\n\r\n"
)
BUSYBOX = (
    b"GET /chunks/00ff HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: Wget\r\n"
    b"Range: bytes=100-\r\nConnection: close\r\n\r\n"
)
CURL_POST = (
    b"POST /boot/status/52-54-00-12-34-56 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\nContent-Length: 8\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
    b"stage=up"
)


def test_what_boot_clients_send() -> None:
    head, used = parse_head_untrusted(IPXE)  # type: ignore[misc]
    assert (head.method, head.target, head.http_version) == (b"GET", b"/boot/ipxe/52-54-00-12-34-56", b"1.1")
    assert head.headers[b"host"] == b"10.0.0.1:8080" and head.keep_alive and used == len(IPXE)
    head, _ = parse_head_untrusted(BUSYBOX)  # type: ignore[misc]
    assert head.headers[b"range"] == b"bytes=100-" and not head.keep_alive
    head, used = parse_head_untrusted(CURL_POST)  # type: ignore[misc]
    assert head.content_length == 8 and CURL_POST[used:] == b"stage=up"
    one_oh, _ = parse_head_untrusted(b"GET / HTTP/1.0\n\n")  # type: ignore[misc]
    assert one_oh.http_version == b"1.0" and not one_oh.keep_alive  # bare LF, no Host: fine in 1.0


def test_incomplete_heads_ask_for_more_and_pipelined_requests_split() -> None:
    for cut in range(len(IPXE)):
        assert parse_head_untrusted(IPXE[:cut]) is None
    two = IPXE + BUSYBOX
    first, used = parse_head_untrusted(two)  # type: ignore[misc]
    second, used2 = parse_head_untrusted(two[used:])  # type: ignore[misc]
    assert first.target.startswith(b"/boot/ipxe") and second.target == b"/chunks/00ff"
    assert used + used2 == len(two)
    assert parse_head_untrusted(b"\r\n\r\n" + IPXE) is not None  # empty lines before it: skipped


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x16\x03\x01 this is not HTTP\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/2.0\r\nHost: h\r\n\r\n", 400),
        (b"GET  /x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /x\x00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost : h\r\n\r\n", 400),  # space before the colon
        (b"GET /x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET /x HTTP/1.1\r\nHost: h\x01\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /" + b"a" * MAX_HEAD + b" HTTP/1.1\r\nHost: h\r\n\r\n", 431),
        (b"GET /x HTTP/1.1\r\nHost: h\r\nX: " + b"a" * MAX_HEAD, 431),  # no end in sight
    ],
)
def test_malformed_heads_get_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_head_untrusted(raw)
    assert caught.value.status == status


def test_chunked_bodies() -> None:
    body = b"3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    assert parse_chunked_untrusted(body, 100) == (b"abcdefgh", len(body) - 4)
    for cut in range(len(body) - 4):
        assert parse_chunked_untrusted(body[:cut], 100) is None
    with pytest.raises(BadRequest) as caught:
        parse_chunked_untrusted(b"ff\r\n" + b"a" * 255 + b"\r\n0\r\n\r\n", 100)
    assert caught.value.status == 413
    for bad in (b"zz\r\n", b"3\r\nabcX\r\n", b"0\r\nbad trailer\r\n\r\n"):
        with pytest.raises(BadRequest):
            parse_chunked_untrusted(bad, 100)


def test_response_head() -> None:
    assert response_head(204, b"No Content", [(b"server", b"cwboot")]) == (
        b"HTTP/1.1 204 No Content\r\nserver: cwboot\r\n\r\n"
    )


# -- the differential against h11


def h11_reading(raw: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes], bool] | None:
    """What h11 makes of a complete head: None if it refuses it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event
    fields: dict[bytes, bytes] = {}
    for name, value in event.headers:
        fields[name] = fields[name] + b", " + value if name in fields else value
    keep_alive = event.http_version == b"1.1" and not any(
        t.strip() == b"close" for t in fields.get(b"connection", b"").lower().split(b",")
    )
    return event.method, event.target, event.http_version, fields, keep_alive


def ours(raw: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes], bool] | None:
    try:
        parsed = parse_head_untrusted(raw)
    except BadRequest:
        return None
    assert parsed is not None, "a complete head was not read"
    head, used = parsed
    assert used == len(raw)
    return head.method, head.target, head.http_version, head.headers, head.keep_alive


_TOKEN_CHARS = "!#$%&'*+-.^_`|~" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
tokens = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=8).map(str.encode)
# inside the grammar both implement: no DEL, no obs-fold, no duplicate or odd framing headers
odd_bytes = st.sampled_from([b"", b" ", b"\t", b"\x01", b"\x00", b":", b"\xff", b"/", b'"'])
targets = st.builds(lambda a, b: a + b, st.sampled_from([b"/", b"/boot/ipxe/x", b"*", b"/c?a=1"]), odd_bytes)
# h11 lets control characters other than NUL through in values; cwboot refuses them
# (RFC 9110 section 5.5 allows either): the table above has that case, not the differential.
values = st.builds(
    lambda a, b, c: a + b + c,
    st.sampled_from([b"", b"h", b"close", b"keep-alive", b"Close", b"foo, close", b"a b"]),
    odd_bytes.filter(lambda b: b != b"\x01"),
    st.sampled_from([b"", b" ", b"x"]),
)
names = st.one_of(
    tokens,
    st.sampled_from([b"Host", b"host", b"Connection", b"Range", b"X-Y", b"Bad Name", b"", b"A\x01"]),
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from([b"GET", b"HEAD", b"POST"]), tokens, st.just(b"G T")))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [method + b" " + draw(targets) + b" " + version]
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"10.0.0.1"))
    lines += [n + b": " + v for n, v in fields if n.lower() not in (b"content-length", b"transfer-encoding")]
    return eol.join(lines) + eol + eol


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads())
def test_same_reading_as_h11(raw: bytes) -> None:
    assert ours(raw) == h11_reading(raw)
