"""The DHCP codec, run through both backends (ids py-codec / c-codec), plus the differential fuzz.

The Hypothesis tests run in every session: for any input, the Cython and the
pure-Python codec return equal packets or both raise BadPacket (h11's fuzz
invariant: parses, or raises the one error type).
"""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwboot.protocol.dhcp import BadPacket, _spec, _wire_py
from tests.protocol.dhcp_helpers import cython_codec, discover, request_bytes

_wire_c = cython_codec()

BACKENDS = [pytest.param(_wire_py, id="py-codec"), pytest.param(_wire_c, id="c-codec")]


@pytest.fixture(params=BACKENDS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


# -- parsing


def test_parses_the_header_and_options(codec: ModuleType) -> None:
    pkt = codec.parse_untrusted(
        discover("52:54:00:aa:bb:cc", (61, b"\x01RT\x00\xaa\xbb\xcc"), xid=7, flags=0x8000)
    )
    assert (pkt.op, pkt.htype, pkt.hlen, pkt.xid, pkt.flags) == (1, 1, 6, 7, 0x8000)
    assert pkt.mac == "52:54:00:aa:bb:cc"
    assert pkt.message_type == _spec.DHCPDISCOVER
    assert pkt.options == {53: b"\x01", 61: b"\x01RT\x00\xaa\xbb\xcc"}
    assert pkt.ciaddr == pkt.giaddr == bytes(4)
    assert len(pkt.sname) == 64 and len(pkt.file) == 128


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", _spec.ERR_SHORT),
        (b"\x01", _spec.ERR_SHORT),
        (discover()[:235], _spec.ERR_SHORT),
        (discover()[:239], _spec.ERR_SHORT),
        (request_bytes(cookie=0x63825364), _spec.ERR_COOKIE),
        (request_bytes(options=b"\x35\x01\x01\x3d\x09abc"), _spec.ERR_OPT_TRUNCATED),
        (request_bytes(options=b"\x35\x01\x01\x3d"), _spec.ERR_OPT_TRUNCATED),
        (request_bytes(options=[(53, b"\x01"), (52, b"\x04")]), _spec.ERR_OVERLOAD),
        (request_bytes(options=[(53, b"\x01"), (52, b"")]), _spec.ERR_OVERLOAD),
        (request_bytes(options=[(53, b"\x01"), (52, b"\x01\x01")]), _spec.ERR_OVERLOAD),
        (request_bytes(options=[(53, b"\x01\x02")]), _spec.ERR_MESSAGE_TYPE),
        (request_bytes(options=[(53, b"")]), _spec.ERR_MESSAGE_TYPE),
    ],
    ids=["0-bytes", "1-byte", "235-bytes", "no-cookie", "bad-cookie", "value-past-end",
         "length-missing", "overload-4", "overload-empty", "overload-2-bytes", "type-2-bytes", "type-empty"],
)  # fmt: skip
def test_malformed_packets_raise_bad_packet(codec: ModuleType, data: bytes, error: str) -> None:
    with pytest.raises(BadPacket) as info:
        codec.parse_untrusted(data)
    assert str(info.value) == error


def test_hlen_over_16_is_refused(codec: ModuleType) -> None:
    data = bytearray(discover())
    data[2] = 17
    with pytest.raises(BadPacket, match="hlen"):
        codec.parse_untrusted(bytes(data))


def test_junk_after_end_and_missing_end_are_accepted(codec: ModuleType) -> None:
    assert codec.parse_untrusted(discover() + b"\x99\x05junk").options == {53: b"\x01"}
    assert (
        codec.parse_untrusted(request_bytes(options=[(53, b"\x03")], end=False)).message_type == 3
    )


def test_repeated_options_are_concatenated_rfc3396(codec: ModuleType) -> None:
    long_id = bytes(range(255))
    pkt = codec.parse_untrusted(
        discover("52:54:00:00:00:01", (61, long_id[:200]), (12, b"n1"), (61, long_id[200:]))
    )
    assert pkt.options[61] == long_id


def test_overload_reads_file_then_sname_after_the_options_field(codec: ModuleType) -> None:
    file = bytes((12, 2)) + b"fi" + b"\xff"
    sname = bytes((12, 2)) + b"sn" + bytes((52, 1, 1)) + b"\xff"
    pkt = codec.parse_untrusted(
        request_bytes(options=[(53, b"\x01"), (52, b"\x03"), (12, b"op")], sname=sname, file=file)
    )
    assert pkt.options[12] == b"opfisn"
    assert pkt.options[52] == b"\x03"  # the nested 52 is ignored
    assert pkt.sname == pkt.file == b""


def test_overload_1_keeps_sname(codec: ModuleType) -> None:
    pkt = codec.parse_untrusted(
        request_bytes(options=[(53, b"\x01"), (52, b"\x01")], sname=b"host", file=b"\x42\x01x")
    )
    assert pkt.options[0x42] == b"x"
    assert pkt.sname.rstrip(b"\0") == b"host" and pkt.file == b""


def test_bootp_without_option_53_has_message_type_0(codec: ModuleType) -> None:
    assert codec.parse_untrusted(request_bytes(options=[])).message_type == 0


# -- building


def test_reply_layout(codec: ModuleType) -> None:
    req = codec.parse_untrusted(
        discover("52:54:00:aa:bb:cc", xid=0xDEADBEEF, flags=0x8000, giaddr="10.1.0.1", hops=2)
    )
    out = codec.build_reply(
        req, _spec.DHCPOFFER, bytes(4), b"\x0a\x36\x00\x65", b"\x0a\x36\x00\x01", b"head", b"undionly.kpxe",
        [(54, b"\x0a\x36\x00\x01"), (1, b"\xff\xff\x00\x00")],
    )  # fmt: skip
    assert len(out) == _spec.MIN_REPLY
    f = _spec.HEADER.unpack_from(out)
    assert f[:7] == (2, 1, 6, 0, 0xDEADBEEF, 0, 0x8000)
    assert f[8:11] == (b"\x0a\x36\x00\x65", b"\x0a\x36\x00\x01", b"\x0a\x01\x00\x01")
    assert (
        f[11] == req.chaddr
        and f[12].rstrip(b"\0") == b"head"
        and f[13].rstrip(b"\0") == b"undionly.kpxe"
    )
    assert out[240:255] == bytes((53, 1, 2, 54, 4, 10, 54, 0, 1, 1, 4, 255, 255, 0, 0))
    assert out[255] == 255 and out[256:] == bytes(44)


def test_long_values_are_split_rfc3396_and_read_back(codec: ModuleType) -> None:
    req = codec.parse_untrusted(discover())
    value = bytes(range(256)) * 2
    out = codec.build_reply(
        req, 2, bytes(4), bytes(4), bytes(4), b"", b"", [(61, value), (82, b"")]
    )
    assert out[243:245] == bytes((61, 255)) and out[243 + 257 : 243 + 259] == bytes((61, 255))
    assert codec.parse_untrusted(out).options == {53: b"\x02", 61: value, 82: b""}


def test_encode_options(codec: ModuleType) -> None:
    assert codec.encode_options([(176, b"\x01"), (1, b"")]) == bytes((176, 1, 1, 1, 0))
    assert codec.encode_options([]) == b""


@pytest.mark.parametrize("code", [0, 255, 256, -1])
def test_pad_end_and_out_of_range_codes_are_refused(codec: ModuleType, code: int) -> None:
    req = codec.parse_untrusted(discover())
    with pytest.raises(ValueError, match="1..254"):
        codec.encode_options([(code, b"x")])
    with pytest.raises(ValueError, match="1..254"):
        codec.build_reply(req, 2, bytes(4), bytes(4), bytes(4), b"", b"", [(code, b"x")])


# -- the differential fuzz: both backends agree on everything


def _both_parse(data: bytes) -> None:
    try:
        expected = _wire_py.parse_untrusted(data)
    except BadPacket as exc:
        with pytest.raises(BadPacket) as info:
            _wire_c.parse_untrusted(data)
        assert str(info.value) == str(exc)
        return
    assert _wire_c.parse_untrusted(data) == expected


option = st.tuples(st.integers(0, 255), st.binary(max_size=40))
options_area = st.lists(
    st.one_of(
        option.map(lambda o: bytes((o[0], len(o[1]))) + o[1]),
        st.sampled_from(
            [b"\x00", b"\xff", b"\x34\x01\x01", b"\x34\x01\x02", b"\x34\x01\x03", b"\x35\x01\x03"]
        ),
        st.binary(max_size=4),
    ),
    max_size=12,
).map(b"".join)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    header = bytearray(draw(st.binary(min_size=236, max_size=236)))
    if draw(st.booleans()):
        header[2] = draw(st.integers(0, 16))
    if draw(st.booleans()):  # option-shaped sname/file so overload parses them
        header[44:108] = draw(options_area).ljust(64, b"\0")[:64]
        header[108:236] = draw(options_area).ljust(128, b"\0")[:128]
    cookie = (
        struct.pack("!I", _spec.MAGIC_COOKIE)
        if draw(st.integers(0, 9))
        else draw(st.binary(min_size=4, max_size=4))
    )
    return bytes(header) + cookie + draw(options_area)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets())
def test_backends_agree_on_packet_shaped_input(data: bytes) -> None:
    _both_parse(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_backends_agree_on_arbitrary_bytes(data: bytes) -> None:
    _both_parse(data)


@settings(max_examples=200, deadline=None)
@given(
    packets(),
    st.integers(0, 255),
    st.lists(st.binary(min_size=0, max_size=6), min_size=5, max_size=5),
    st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=600)), max_size=6),
)
def test_backends_build_identical_replies(
    data: bytes, mtype: int, fields: list[bytes], opts: list[tuple[int, bytes]]
) -> None:
    try:
        req = _wire_py.parse_untrusted(data)
    except BadPacket:
        req = _wire_py.parse_untrusted(discover())
    ciaddr, yiaddr, siaddr, sname, file = fields
    args = (req, mtype, ciaddr, yiaddr, siaddr, sname * 20, file * 30, opts)
    built = _wire_py.build_reply(*args)
    assert _wire_c.build_reply(*args) == built
    assert built[240:243] == bytes((53, 1, mtype))
