"""Pure-Python DHCPv4 codec: the reference the Cython ``_wire_c`` must match byte for byte.

The rules are written down once, in ``_spec``'s docstring; this module and
ext/dhcp_wire.pyx implement them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


# -- the respond fast path (rules in ``_spec``, "The respond fast path")

_COOKIE = _spec.MAGIC_COOKIE.to_bytes(4, "big")
_ZERO4 = bytes(4)
_BROADCAST = ("255.255.255.255", 68)
_READ = frozenset(_spec.FAST_READ)
_OFFER_REPLY = {_spec.DHCPDISCOVER: _spec.DHCPOFFER, _spec.DHCPREQUEST: _spec.DHCPACK}


class FastEntry:
    """One compiled template (see ``FastResponder.add``)."""

    __slots__ = ("checked", "echo_uuid", "end", "offer", "owner", "yiaddr")

    def __init__(self, offer: bytes, end: int, yiaddr: bytes, echo_uuid: bool, owner: object,
                 checked: object) -> None:  # fmt: skip
        self.offer = offer
        self.end = end
        self.yiaddr = yiaddr
        self.echo_uuid = echo_uuid
        self.owner = owner
        self.checked = checked


class FastResponder:
    """Reply templates compiled by the boot policy, and ``respond`` (rules in ``_spec``).

    ``check(owner) -> bool`` says whether a template is still current; it is
    called when ``source.revision`` differs from the revision the template was
    last checked at (every time when ``source`` is None). ``max_entries`` bounds
    the table (it is cleared when full, like the policy's memo).
    """

    def __init__(self, server_id: bytes, check: Callable[[object], bool], source: object = None,
                 max_entries: int = 1 << 17) -> None:  # fmt: skip
        if len(server_id) != 4:
            raise ValueError("server id: 4 bytes")
        self.server_id = bytes(server_id)
        self.check = check
        self.source = source
        self.max_entries = max_entries
        self.entries: dict[bytes, FastEntry] = {}
        self._relay: tuple[bytes, tuple[str, int]] = (_ZERO4, _BROADCAST)

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def add(self, key: bytes, offer: bytes, end: int, yiaddr: bytes, echo_uuid: bool, owner: object,
            checked: object) -> None:  # fmt: skip
        """``offer``: an OFFER built by ``build_reply`` for a request with xid, flags, ciaddr,
        giaddr and chaddr all zero, END at ``end``; ``checked``: the revision at which
        ``owner`` was known current (None: check before first use)."""
        if not (_spec.OFF_OPTIONS + 3 <= end < len(offer) and offer[end] == _END
                and offer[_spec.OFF_REPLY_TYPE] == _spec.DHCPOFFER and len(yiaddr) == 4):  # fmt: skip
            raise ValueError("not a reply template")
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[key] = FastEntry(bytes(offer), end, bytes(yiaddr), bool(echo_uuid), owner, checked)

    def respond(self, data: bytes) -> tuple[bytes, tuple[str, int]] | None:
        n = len(data)
        if (n < _spec.MIN_PACKET or data[0] != _spec.BOOTREQUEST or data[1] != 1 or data[2] != 6
                or data[236:240] != _COOKIE):  # fmt: skip
            return None
        seen: dict[int, int] = {}  # code -> offset of its length byte
        i = _spec.OFF_OPTIONS
        while i < n:
            code = data[i]
            if code == _PAD:
                i += 1
                continue
            if code == _END:
                break
            if i + 1 >= n:
                return None
            end = i + 2 + data[i + 1]
            if end > n or code == _OVERLOAD:
                return None
            if code in _READ:
                if code in seen:
                    return None
                seen[code] = i + 1
            i = end
        at = seen.get(_spec.OPT_MESSAGE_TYPE)
        if at is None or data[at] != 1:
            return None
        mtype = data[at + 1]
        reply_type = _OFFER_REPLY.get(mtype)
        if reply_type is None:
            return None
        parts = [data[28:34]]
        for code in (_spec.OPT_USER_CLASS, _spec.OPT_VENDOR_CLASS, _spec.OPT_CLIENT_ARCH):
            at = seen.get(code)
            if at is None:
                parts.append(b"\0")
            else:
                parts.append(b"\1" + data[at : at + 1 + data[at]])
        key = b"".join(parts)
        entry = self.entries.get(key)
        if entry is None:
            return None
        source = self.source
        revision = None if source is None else source.revision  # type: ignore[attr-defined]
        if revision is None or entry.checked is None or entry.checked != revision:
            if not self.check(entry.owner):
                self.entries.pop(key, None)
                return None
            entry.checked = revision
        ciaddr = data[12:16]
        reply_ciaddr = ciaddr
        if reply_type == _spec.DHCPACK:
            at = seen.get(_spec.OPT_SERVER_ID)
            if at is not None and data[at + 1 : at + 1 + data[at]] != self.server_id:
                return None
            at = seen.get(_spec.OPT_REQUESTED_IP)
            requested = data[at + 1 : at + 1 + data[at]] if at is not None and data[at] else ciaddr
            if requested != _ZERO4 and requested != entry.yiaddr:
                return None
        else:
            reply_ciaddr = _ZERO4
        giaddr = data[24:28]
        tail = bytearray()
        if entry.echo_uuid:
            at = seen.get(_spec.OPT_CLIENT_UUID)
            if at is not None:
                if data[at] != 17 or data[at + 1] != 0:
                    return None
                tail += data[at - 1 : at + 18]
        at = seen.get(_spec.OPT_CLIENT_ID)
        if at is not None:
            tail += data[at - 1 : at + 1 + data[at]]
        if giaddr != _ZERO4:
            at = seen.get(_spec.OPT_RELAY_AGENT)
            if at is not None:
                tail += data[at - 1 : at + 1 + data[at]]
        offer = entry.offer
        out = bytearray(offer[: entry.end])
        out[4:8] = data[4:8]  # xid
        out[10:12] = data[10:12]  # flags
        out[12:16] = reply_ciaddr
        out[24:28] = giaddr
        out[28:44] = data[28:44]  # chaddr
        out[_spec.OFF_REPLY_TYPE] = reply_type
        out += tail
        out.append(_END)
        if len(out) < _spec.MIN_REPLY:
            out += bytes(_spec.MIN_REPLY - len(out))
        if giaddr != _ZERO4:
            relay = self._relay
            if relay[0] != giaddr:
                relay = self._relay = (giaddr, (f"{giaddr[0]}.{giaddr[1]}.{giaddr[2]}.{giaddr[3]}", 67))
            return bytes(out), relay[1]
        if ciaddr != _ZERO4:
            return bytes(out), (f"{ciaddr[0]}.{ciaddr[1]}.{ciaddr[2]}.{ciaddr[3]}", 68)
        return bytes(out), _BROADCAST
