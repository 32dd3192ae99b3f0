"""Tables: malformed requests and escaping paths -> BadPacket (and which ERROR), never anything else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwboot.protocol.tftp import (
    BadPacket,
    ErrorCode,
    ReadRequest,
    build_request,
    open_in_root_untrusted,
    parse_packet_untrusted,
    parse_request_untrusted,
    safe_relative_path_untrusted,
)

RRQ = b"\x00\x01"

MALFORMED = [
    # (datagram, ERROR code or None for a silent drop, reason)
    (b"", None, "short_datagram"),
    (b"\x00", None, "short_datagram"),
    (b"\x00\x00", ErrorCode.ILLEGAL_OPERATION, "not_a_request"),
    (b"\x00\x07abc\x00", ErrorCode.ILLEGAL_OPERATION, "not_a_request"),
    (b"\xff\xff", ErrorCode.ILLEGAL_OPERATION, "not_a_request"),
    (b"\x00\x03\x00\x01data", ErrorCode.ILLEGAL_OPERATION, "not_a_request"),
    (b"\x00\x04\x00\x01", ErrorCode.ILLEGAL_OPERATION, "not_a_request"),
    (b"\x00\x02f\x00octet\x00", ErrorCode.ACCESS_VIOLATION, "write_refused"),
    (RRQ, ErrorCode.ILLEGAL_OPERATION, "request_unterminated"),
    (RRQ + b"file", ErrorCode.ILLEGAL_OPERATION, "request_unterminated"),
    (RRQ + b"file\x00octet", ErrorCode.ILLEGAL_OPERATION, "request_unterminated"),
    (RRQ + b"file\x00", ErrorCode.ILLEGAL_OPERATION, "request_without_mode"),
    (RRQ + b"file\x00mail\x00", ErrorCode.ILLEGAL_OPERATION, "bad_mode"),
    (RRQ + b"file\x00\xffoctet\x00", ErrorCode.ILLEGAL_OPERATION, "request_not_ascii"),
    (
        RRQ + b"file\x00octet\x00blksize\x00",
        ErrorCode.ILLEGAL_OPERATION,
        "request_option_without_value",
    ),
    (
        RRQ + b"file\x00octet\x00\x00512\x00",
        ErrorCode.ILLEGAL_OPERATION,
        "request_empty_option_name",
    ),
    (
        RRQ + b"f\x00octet\x00blksize\x00512\x00BLKSIZE\x00512\x00",
        ErrorCode.ILLEGAL_OPERATION,
        "request_duplicate_option",
    ),
    (
        RRQ + b"f\x00octet\x00" + b"".join(b"o%d\x001\x00" % i for i in range(20)),
        ErrorCode.ILLEGAL_OPERATION,
        "request_too_many_options",
    ),
    (
        RRQ + b"f\x00octet\x00" + b"".join(b"o%d\x001\x00" % i for i in range(200)),
        ErrorCode.ILLEGAL_OPERATION,
        "request_too_long",
    ),
    (RRQ + b"a" * 65536 + b"\x00octet\x00", ErrorCode.ILLEGAL_OPERATION, "request_too_long"),
]


@pytest.mark.parametrize(("datagram", "code", "reason"), MALFORMED)
def test_malformed_requests(datagram: bytes, code: ErrorCode | None, reason: str) -> None:
    with pytest.raises(BadPacket) as info:
        parse_request_untrusted(datagram)
    assert (info.value.code, info.value.reason) == (code, reason)


def test_good_request_round_trips() -> None:
    datagram = build_request("pxe/undionly.kpxe", "octet", {"blksize": "1468", "tsize": "0"})
    assert parse_request_untrusted(datagram) == ReadRequest(
        "pxe/undionly.kpxe", "octet", {"blksize": "1468", "tsize": "0"}
    )
    # Mode and option names are case-insensitive (RFC 1350 §5, RFC 2347 §2).
    shouted = RRQ + b"f\x00OCTET\x00BlkSize\x00600\x00"
    assert parse_request_untrusted(shouted) == ReadRequest("f", "octet", {"blksize": "600"})


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_bad_packet(datagram: bytes) -> None:
    for parse in (parse_request_untrusted, parse_packet_untrusted):
        try:
            parse(datagram)
        except BadPacket:
            pass


@given(st.lists(st.binary(max_size=20), max_size=8))
def test_nul_separated_fields_parse_or_raise_bad_packet(fields: list[bytes]) -> None:
    try:
        parse_request_untrusted(RRQ + b"\x00".join(fields) + b"\x00")
    except BadPacket:
        pass


ESCAPES = [
    ("../etc/passwd", "filename_traversal"),
    ("a/../../etc/passwd", "filename_traversal"),
    ("..", "filename_traversal"),
    ("./file", "filename_traversal"),
    ("a//b", "filename_traversal"),
    ("dir/", "filename_traversal"),
    ("/etc/passwd", "filename_absolute"),
    ("//etc/passwd", "filename_absolute"),
    ("..\\..\\etc\\passwd", "filename_backslash"),
    ("pxe\\undionly.kpxe", "filename_backslash"),
    ("file\x00.txt", "filename_control_char"),
    ("file\n", "filename_control_char"),
    ("\x1b[2Jfile", "filename_control_char"),
    ("file\x7f", "filename_control_char"),
    ("a" * 65536, "filename_too_long"),
    ("a/" * 200 + "b", "filename_too_long"),
]


@pytest.mark.parametrize(("name", "reason"), ESCAPES)
def test_escaping_names_are_refused(name: str, reason: str) -> None:
    with pytest.raises(BadPacket) as info:
        safe_relative_path_untrusted(name)
    assert info.value.reason == reason
    assert info.value.code == ErrorCode.ACCESS_VIOLATION


@pytest.fixture
def root(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"hello")
    (root / "sub" / "nested").write_bytes(b"nested")
    (root / "link-out").symlink_to(outside / "secret")
    (root / "dir-out").symlink_to(outside)
    (root / "link-in").symlink_to(root / "file")
    (root / "abs-etc").symlink_to("/etc/passwd")
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("link-out", ErrorCode.ACCESS_VIOLATION, "path_escapes_root"),
        ("dir-out/secret", ErrorCode.ACCESS_VIOLATION, "path_escapes_root"),
        ("abs-etc", ErrorCode.ACCESS_VIOLATION, "path_escapes_root"),
        ("loop", ErrorCode.ACCESS_VIOLATION, "file_unreadable"),
        ("sub", ErrorCode.ACCESS_VIOLATION, "not_a_regular_file"),
        ("fifo", ErrorCode.ACCESS_VIOLATION, "not_a_regular_file"),
        ("missing", ErrorCode.FILE_NOT_FOUND, "file_not_found"),
        ("../outside/secret", ErrorCode.ACCESS_VIOLATION, "filename_traversal"),
    ],
)
def test_root_refuses(root: Path, name: str, code: ErrorCode, reason: str) -> None:
    with pytest.raises(BadPacket) as info:
        open_in_root_untrusted(root, name, defaults={})
    assert (info.value.code, info.value.reason) == (code, reason)


@pytest.mark.parametrize(
    ("name", "content"), [("file", b"hello"), ("sub/nested", b"nested"), ("link-in", b"hello")]
)
def test_root_serves(root: Path, name: str, content: bytes) -> None:
    source = open_in_root_untrusted(root, name, defaults={})
    assert source.size() == len(content)
    assert source.read(3) + source.read(100) == content
    assert source.read(10) == b""
    source.close()


def test_default_loaders_fill_in_and_the_root_wins(root: Path, tmp_path: Path) -> None:
    loader = tmp_path / "loader.efi"
    loader.write_bytes(b"MZ loader")
    defaults = {"ipxe.efi": loader, "file": loader}
    assert open_in_root_untrusted(root, "ipxe.efi", defaults).read(100) == b"MZ loader"
    assert open_in_root_untrusted(root, "file", defaults).read(100) == b"hello"
    # A default is only used for its exact name, and never to bypass a refusal.
    with pytest.raises(BadPacket):
        open_in_root_untrusted(root, "link-out", {"link-out": loader})


def test_debian_ipxe_loaders_are_served_by_default(tmp_path: Path) -> None:
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        source = open_in_root_untrusted(tmp_path, name)
        assert source.size() == (Path("/usr/lib/ipxe") / name).stat().st_size > 0
        source.close()
