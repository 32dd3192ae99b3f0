"""Range/ETag decisions (RFC 9110 sections 13-14)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwboot.protocol.http_range import decide, etag_matches, parse_range_untrusted

ETAG = b'"abc"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"bytes=0-9", (0, 10)),
        (b"bytes=10-", (10, 100)),
        (b"bytes=-10", (90, 100)),
        (b"bytes=90-500", (90, 100)),
        (b"bytes=-500", (0, 100)),
        (b"bytes=100-", None),
        (b"bytes=-0", None),
    ],
)
def test_single_ranges(header: bytes, expected: tuple[int, int] | None) -> None:
    assert parse_range_untrusted(header, 100) == expected


@pytest.mark.parametrize(
    "header", [b"bytes=5-1", b"items=0-1", b"bytes=0-1,5-6", b"bytes=-", b"\xff"]
)
def test_malformed_ranges_are_ignored(header: bytes) -> None:
    assert decide(100, ETAG, range_header=header).status == 200


def test_decisions() -> None:
    assert decide(100, ETAG).status == 200
    d = decide(100, ETAG, range_header=b"bytes=10-19")
    assert (d.status, d.start, d.stop) == (206, 10, 20)
    assert dict(d.headers)[b"content-range"] == b"bytes 10-19/100"
    d = decide(100, ETAG, range_header=b"bytes=200-")
    assert d.status == 416 and dict(d.headers)[b"content-range"] == b"bytes */100"
    assert decide(100, ETAG, if_none_match=b'"x", "abc"').status == 304
    assert decide(100, ETAG, if_none_match=b"*").status == 304
    assert decide(100, ETAG, if_none_match=b'"x"').status == 200
    # If-Range with a stale validator: the whole entity instead of a range
    assert decide(100, ETAG, range_header=b"bytes=0-1", if_range=b'"old"').status == 200
    assert decide(100, ETAG, range_header=b"bytes=0-1", if_range=ETAG).status == 206


def test_weak_comparison() -> None:
    assert etag_matches(b'W/"abc"', ETAG)


@given(st.binary(max_size=40), st.integers(0, 10**9))
def test_fuzz_range_parser(header: bytes, size: int) -> None:
    try:
        r = parse_range_untrusted(header, size)
    except ValueError:
        return
    if r is not None:
        assert 0 <= r[0] < r[1] <= size
