"""Pure-Python DHCPv4 codec: the reference the Cython ``_wire_c`` must match byte for byte.

The rules are written down once, in ``_spec``'s docstring; this module and
ext/dhcp_wire.pyx implement them.
"""

from __future__ import annotations

from collections.abc import Iterable

from cwboot.protocol.dhcp import _spec
from cwboot.protocol.dhcp._spec import BadPacket, DhcpPacket

_HEADER = _spec.HEADER
_END = _spec.OPT_END
_PAD = _spec.OPT_PAD
_OVERLOAD = _spec.OPT_OVERLOAD
_new_packet = tuple.__new__


def _parse_area(
    data: bytes, start: int, stop: int, options: dict[int, bytes], skip_overload: bool
) -> None:
    """Read options from data[start:stop] into ``options``, concatenating repeats (RFC 3396)."""
    i = start
    while i < stop:
        code = data[i]
        if code == _PAD:
            i += 1
            continue
        if code == _END:
            return
        if i + 1 >= stop:
            raise BadPacket(_spec.ERR_OPT_TRUNCATED)
        length = data[i + 1]
        end = i + 2 + length
        if end > stop:
            raise BadPacket(_spec.ERR_OPT_TRUNCATED)
        if not (skip_overload and code == _OVERLOAD):
            value = data[i + 2 : end]
            previous = options.get(code)
            options[code] = value if previous is None else previous + value
        i = end


def parse_untrusted(data: bytes) -> DhcpPacket:
    """Parse one datagram; raises only BadPacket (rules in ``_spec``)."""
    if len(data) < _spec.MIN_PACKET:
        raise BadPacket(_spec.ERR_SHORT)
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, sname, file, cookie) = _HEADER.unpack_from(data)  # fmt: skip
    if hlen > _spec.CHADDR_LEN:
        raise BadPacket(_spec.ERR_HLEN)
    if cookie != _spec.MAGIC_COOKIE:
        raise BadPacket(_spec.ERR_COOKIE)
    options: dict[int, bytes] = {}
    _parse_area(data, _spec.OFF_OPTIONS, len(data), options, False)
    overload = options.get(_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            raise BadPacket(_spec.ERR_OVERLOAD)
        if overload[0] & _spec.OVERLOAD_FILE:
            _parse_area(data, _spec.OFF_FILE, _spec.OFF_FILE + _spec.FILE_LEN, options, True)
            file = b""
        if overload[0] & _spec.OVERLOAD_SNAME:
            _parse_area(data, _spec.OFF_SNAME, _spec.OFF_SNAME + _spec.SNAME_LEN, options, True)
            sname = b""
    message_type = 0
    mt = options.get(_spec.OPT_MESSAGE_TYPE)
    if mt is not None:
        if len(mt) != 1:
            raise BadPacket(_spec.ERR_MESSAGE_TYPE)
        message_type = mt[0]
    mac = chaddr[:hlen].hex(":")
    return _new_packet(DhcpPacket, (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr,
                                    giaddr, chaddr, sname, file, options, message_type, mac))  # fmt: skip


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options in order, each value over 255 bytes split into several instances (RFC 3396 6)."""
    out = bytearray()
    for code, value in options:
        if not 1 <= code <= 254:
            raise ValueError(_spec.ERR_OPTION_CODE)
        if not value:
            out += bytes((code, 0))
            continue
        for i in range(0, len(value), 255):
            piece = value[i : i + 255]
            out.append(code)
            out.append(len(piece))
            out += piece
    return bytes(out)


def build_reply(
    request: DhcpPacket,
    message_type: int,
    ciaddr: bytes,
    yiaddr: bytes,
    siaddr: bytes,
    sname: bytes,
    file: bytes,
    options: Iterable[tuple[int, bytes]],
) -> bytes:
    """A BOOTREPLY to ``request`` (layout in ``_spec``). sname/file longer than their fields are cut."""
    out = bytearray(
        _HEADER.pack(
            _spec.BOOTREPLY,
            request.htype,
            request.hlen,
            0,
            request.xid,
            0,
            request.flags,
            ciaddr,
            yiaddr,
            siaddr,
            request.giaddr,
            request.chaddr,
            sname,
            file,
            _spec.MAGIC_COOKIE,
        )  # fmt: skip
    )
    out += bytes((_spec.OPT_MESSAGE_TYPE, 1, message_type))
    out += encode_options(options)
    out.append(_END)
    if len(out) < _spec.MIN_REPLY:
        out += bytes(_spec.MIN_REPLY - len(out))
    return bytes(out)
