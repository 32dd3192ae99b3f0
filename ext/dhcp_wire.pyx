# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython DHCPv4 codec: the fast path of cwboot.protocol.dhcp.

It implements the rules written in cwboot/protocol/dhcp/_spec.py and takes
every constant, limit, error text and the DhcpPacket class from there at import
time, so the wire format has one source of truth; the differential tests check
that it returns exactly what cwboot/protocol/dhcp/_wire_py.py returns.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.string cimport memcmp, memcpy, memset

from cwboot.protocol.dhcp import _spec

BadPacket = _spec.BadPacket
DhcpPacket = _spec.DhcpPacket

# Layout and limits, read from the spec (not restated here).
cdef Py_ssize_t OFF_XID = _spec.OFF_XID
cdef Py_ssize_t OFF_SECS = _spec.OFF_SECS
cdef Py_ssize_t OFF_FLAGS = _spec.OFF_FLAGS
cdef Py_ssize_t OFF_CIADDR = _spec.OFF_CIADDR
cdef Py_ssize_t OFF_YIADDR = _spec.OFF_YIADDR
cdef Py_ssize_t OFF_SIADDR = _spec.OFF_SIADDR
cdef Py_ssize_t OFF_GIADDR = _spec.OFF_GIADDR
cdef Py_ssize_t OFF_CHADDR = _spec.OFF_CHADDR
cdef Py_ssize_t OFF_SNAME = _spec.OFF_SNAME
cdef Py_ssize_t OFF_FILE = _spec.OFF_FILE
cdef Py_ssize_t OFF_COOKIE = _spec.OFF_COOKIE
cdef Py_ssize_t OFF_OPTIONS = _spec.OFF_OPTIONS
cdef Py_ssize_t SNAME_LEN = _spec.SNAME_LEN
cdef Py_ssize_t FILE_LEN = _spec.FILE_LEN
cdef Py_ssize_t CHADDR_LEN = _spec.CHADDR_LEN
cdef Py_ssize_t MIN_PACKET = _spec.MIN_PACKET
cdef Py_ssize_t MIN_REPLY = _spec.MIN_REPLY
cdef unsigned long MAGIC_COOKIE = _spec.MAGIC_COOKIE
cdef int BOOTREPLY = _spec.BOOTREPLY
cdef int OPT_PAD = _spec.OPT_PAD
cdef int OPT_END = _spec.OPT_END
cdef int OPT_OVERLOAD = _spec.OPT_OVERLOAD
cdef int OPT_MESSAGE_TYPE = _spec.OPT_MESSAGE_TYPE
cdef int OVERLOAD_FILE = _spec.OVERLOAD_FILE
cdef int OVERLOAD_SNAME = _spec.OVERLOAD_SNAME
ERR_SHORT = _spec.ERR_SHORT
ERR_HLEN = _spec.ERR_HLEN
ERR_COOKIE = _spec.ERR_COOKIE
ERR_OPT_TRUNCATED = _spec.ERR_OPT_TRUNCATED
ERR_OVERLOAD = _spec.ERR_OVERLOAD
ERR_MESSAGE_TYPE = _spec.ERR_MESSAGE_TYPE
ERR_OPTION_CODE = _spec.ERR_OPTION_CODE

cdef const char* HEXDIGITS = b"0123456789abcdef"


cdef inline unsigned int _u16(const unsigned char* p) noexcept:
    return (p[0] << 8) | p[1]


cdef inline unsigned long _u32(const unsigned char* p) noexcept:
    return (<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16) | (<unsigned long>p[2] << 8) | p[3]


cdef int _parse_area(const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, dict options,
                     bint skip_overload) except -1:
    cdef Py_ssize_t i = start
    cdef Py_ssize_t end
    cdef int code, length
    cdef object value, previous
    while i < stop:
        code = p[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return 0
        if i + 1 >= stop:
            raise BadPacket(ERR_OPT_TRUNCATED)
        length = p[i + 1]
        end = i + 2 + length
        if end > stop:
            raise BadPacket(ERR_OPT_TRUNCATED)
        if not (skip_overload and code == OPT_OVERLOAD):
            value = PyBytes_FromStringAndSize(<const char*>p + i + 2, length)
            previous = options.get(code)
            options[code] = value if previous is None else previous + value
        i = end
    return 0


cdef str _mac(const unsigned char* p, int n):
    cdef char buf[48]
    cdef int i
    if n == 0:
        return ""
    for i in range(n):
        buf[3 * i] = HEXDIGITS[p[i] >> 4]
        buf[3 * i + 1] = HEXDIGITS[p[i] & 15]
        buf[3 * i + 2] = b":"
    return buf[:3 * n - 1].decode("ascii")


def parse_untrusted(bytes data not None):
    """Parse one datagram; raises only BadPacket (rules in cwboot.protocol.dhcp._spec)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef int hlen, ov
    cdef object sname, file, mt
    cdef dict options
    if n < MIN_PACKET:
        raise BadPacket(ERR_SHORT)
    hlen = p[2]
    if hlen > CHADDR_LEN:
        raise BadPacket(ERR_HLEN)
    if _u32(p + OFF_COOKIE) != MAGIC_COOKIE:
        raise BadPacket(ERR_COOKIE)
    options = {}
    _parse_area(p, OFF_OPTIONS, n, options, False)
    sname = None
    file = None
    overload = options.get(OPT_OVERLOAD)
    if overload is not None:
        if PyBytes_GET_SIZE(overload) != 1:
            raise BadPacket(ERR_OVERLOAD)
        ov = (<const unsigned char*>PyBytes_AS_STRING(overload))[0]
        if ov < 1 or ov > 3:
            raise BadPacket(ERR_OVERLOAD)
        if ov & OVERLOAD_FILE:
            _parse_area(p, OFF_FILE, OFF_FILE + FILE_LEN, options, True)
            file = b""
        if ov & OVERLOAD_SNAME:
            _parse_area(p, OFF_SNAME, OFF_SNAME + SNAME_LEN, options, True)
            sname = b""
    if sname is None:
        sname = PyBytes_FromStringAndSize(<const char*>p + OFF_SNAME, SNAME_LEN)
    if file is None:
        file = PyBytes_FromStringAndSize(<const char*>p + OFF_FILE, FILE_LEN)
    cdef int message_type = 0
    mt = options.get(OPT_MESSAGE_TYPE)
    if mt is not None:
        if PyBytes_GET_SIZE(mt) != 1:
            raise BadPacket(ERR_MESSAGE_TYPE)
        message_type = (<const unsigned char*>PyBytes_AS_STRING(mt))[0]
    return tuple.__new__(DhcpPacket, (
        p[0], p[1], hlen, p[3], _u32(p + OFF_XID), _u16(p + OFF_SECS), _u16(p + OFF_FLAGS),
        PyBytes_FromStringAndSize(<const char*>p + OFF_CIADDR, 4),
        PyBytes_FromStringAndSize(<const char*>p + OFF_YIADDR, 4),
        PyBytes_FromStringAndSize(<const char*>p + OFF_SIADDR, 4),
        PyBytes_FromStringAndSize(<const char*>p + OFF_GIADDR, 4),
        PyBytes_FromStringAndSize(<const char*>p + OFF_CHADDR, CHADDR_LEN),
        sname, file, options, message_type, _mac(p + OFF_CHADDR, hlen),
    ))


cdef inline Py_ssize_t _encoded_len(Py_ssize_t n) noexcept:
    # Each 255-byte piece costs 2 header bytes; an empty value is one (code, 0) pair.
    if n == 0:
        return 2
    return n + 2 * ((n + 254) // 255)


cdef inline void _put_field(unsigned char* out, bytes value, Py_ssize_t size) noexcept:
    # struct's "Ns": cut to size, pad with NULs.
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    if n > size:
        n = size
    memcpy(out, PyBytes_AS_STRING(value), n)


cdef Py_ssize_t _write_options(unsigned char* out, list opts) except -1:
    cdef Py_ssize_t pos = 0, n, i, piece
    cdef int code
    cdef bytes value
    cdef const unsigned char* v
    for item in opts:
        code = item[0]
        value = item[1]
        n = PyBytes_GET_SIZE(value)
        v = <const unsigned char*>PyBytes_AS_STRING(value)
        if n == 0:
            out[pos] = code
            out[pos + 1] = 0
            pos += 2
            continue
        i = 0
        while i < n:
            piece = n - i
            if piece > 255:
                piece = 255
            out[pos] = code
            out[pos + 1] = <unsigned char>piece
            memcpy(out + pos + 2, v + i, piece)
            pos += 2 + piece
            i += piece
    return pos


def encode_options(options):
    """Options in order, each value over 255 bytes split into several instances (RFC 3396 6)."""
    cdef list opts = options if type(options) is list else list(options)
    cdef Py_ssize_t size = 0
    for item in opts:
        if not 1 <= item[0] <= 254:
            raise ValueError(ERR_OPTION_CODE)
        size += _encoded_len(PyBytes_GET_SIZE(<bytes?>item[1]))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    _write_options(<unsigned char*>PyBytes_AS_STRING(out), opts)
    return out


def build_reply(request, int message_type, bytes ciaddr not None, bytes yiaddr not None,
                bytes siaddr not None, bytes sname not None, bytes file not None, options):
    """A BOOTREPLY to ``request`` (layout in cwboot.protocol.dhcp._spec)."""
    cdef list opts = options if type(options) is list else list(options)
    cdef Py_ssize_t size = OFF_OPTIONS + 3 + 1
    cdef unsigned long xid = request.xid
    cdef unsigned int flags = request.flags
    cdef bytes giaddr = request.giaddr
    cdef bytes chaddr = request.chaddr
    if not 0 <= message_type <= 255:
        raise ValueError("message type out of range")
    for item in opts:
        if not 1 <= item[0] <= 254:
            raise ValueError(ERR_OPTION_CODE)
        size += _encoded_len(PyBytes_GET_SIZE(<bytes?>item[1]))
    if size < MIN_REPLY:
        size = MIN_REPLY
    cdef bytes result = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(result)
    memset(out, 0, size)
    out[0] = BOOTREPLY
    out[1] = <unsigned char>request.htype
    out[2] = <unsigned char>request.hlen
    out[OFF_XID] = (xid >> 24) & 255
    out[OFF_XID + 1] = (xid >> 16) & 255
    out[OFF_XID + 2] = (xid >> 8) & 255
    out[OFF_XID + 3] = xid & 255
    out[OFF_FLAGS] = (flags >> 8) & 255
    out[OFF_FLAGS + 1] = flags & 255
    _put_field(out + OFF_CIADDR, ciaddr, 4)
    _put_field(out + OFF_YIADDR, yiaddr, 4)
    _put_field(out + OFF_SIADDR, siaddr, 4)
    _put_field(out + OFF_GIADDR, giaddr, 4)
    _put_field(out + OFF_CHADDR, chaddr, CHADDR_LEN)
    _put_field(out + OFF_SNAME, sname, SNAME_LEN)
    _put_field(out + OFF_FILE, file, FILE_LEN)
    out[OFF_COOKIE] = (MAGIC_COOKIE >> 24) & 255
    out[OFF_COOKIE + 1] = (MAGIC_COOKIE >> 16) & 255
    out[OFF_COOKIE + 2] = (MAGIC_COOKIE >> 8) & 255
    out[OFF_COOKIE + 3] = MAGIC_COOKIE & 255
    out[OFF_OPTIONS] = OPT_MESSAGE_TYPE
    out[OFF_OPTIONS + 1] = 1
    out[OFF_OPTIONS + 2] = <unsigned char>message_type
    cdef Py_ssize_t pos = OFF_OPTIONS + 3
    pos += _write_options(out + pos, opts)
    out[pos] = OPT_END
    return result



# -- the respond fast path (rules in cwboot.protocol.dhcp._spec, "The respond fast path")

cdef int BOOTREQUEST = _spec.BOOTREQUEST
cdef int DHCPDISCOVER = _spec.DHCPDISCOVER
cdef int DHCPREQUEST = _spec.DHCPREQUEST
cdef int DHCPOFFER = _spec.DHCPOFFER
cdef int DHCPACK = _spec.DHCPACK
cdef Py_ssize_t OFF_REPLY_TYPE = _spec.OFF_REPLY_TYPE
cdef int OPT_REQUESTED_IP = _spec.OPT_REQUESTED_IP
cdef int OPT_SERVER_ID = _spec.OPT_SERVER_ID
cdef int OPT_VENDOR_CLASS = _spec.OPT_VENDOR_CLASS
cdef int OPT_CLIENT_ID = _spec.OPT_CLIENT_ID
cdef int OPT_USER_CLASS = _spec.OPT_USER_CLASS
cdef int OPT_RELAY_AGENT = _spec.OPT_RELAY_AGENT
cdef int OPT_CLIENT_ARCH = _spec.OPT_CLIENT_ARCH
cdef int OPT_CLIENT_UUID = _spec.OPT_CLIENT_UUID
# FAST_READ as a lookup table: code -> slot in the per-request offset array (0: not read).
cdef unsigned char READ_SLOT[256]
memset(READ_SLOT, 0, 256)
for _i, _code in enumerate(_spec.FAST_READ):
    READ_SLOT[_code] = _i + 1
cdef int N_READ = len(_spec.FAST_READ) + 1
cdef tuple BROADCAST = ("255.255.255.255", 68)


cdef class FastEntry:
    """One compiled template (see FastResponder.add)."""
    cdef readonly bytes offer
    cdef readonly Py_ssize_t end
    cdef readonly bytes yiaddr
    cdef readonly bint echo_uuid
    cdef readonly object owner
    cdef public object checked


cdef inline Py_ssize_t _key_part(unsigned char* k, Py_ssize_t pos, const unsigned char* p,
                                 Py_ssize_t a) noexcept:
    # One option of the key: absent 0; present 1, length, value (a: offset of its length byte).
    if a:
        k[pos] = 1
        memcpy(k + pos + 1, p + a, 1 + p[a])
        return pos + 2 + p[a]
    k[pos] = 0
    return pos + 1


cdef inline Py_ssize_t _echo(unsigned char* out, Py_ssize_t pos, const unsigned char* p,
                             Py_ssize_t a) noexcept:
    # Copy one request option (code, length, value) as it came (a: offset of its length byte).
    if a:
        memcpy(out + pos, p + a - 1, 2 + p[a])
        return pos + 2 + p[a]
    return pos


cdef str _ntoa(const unsigned char* p):
    cdef char buf[16]
    cdef int i, pos = 0, v
    for i in range(4):
        v = p[i]
        if v >= 100:
            buf[pos] = 48 + v // 100
            pos += 1
        if v >= 10:
            buf[pos] = 48 + (v // 10) % 10
            pos += 1
        buf[pos] = 48 + v % 10
        pos += 1
        if i < 3:
            buf[pos] = 46
            pos += 1
    return buf[:pos].decode("ascii")


cdef class FastResponder:
    """Reply templates compiled by the boot policy, and ``respond`` (rules in _spec).

    Same API and results as cwboot.protocol.dhcp._wire_py.FastResponder.
    """
    cdef readonly bytes server_id
    cdef readonly object check
    cdef readonly object source
    cdef public Py_ssize_t max_entries
    cdef readonly dict entries
    cdef unsigned char sid[4]
    cdef unsigned char relay_addr[4]
    cdef tuple relay_dest

    def __init__(self, bytes server_id not None, check, source=None, Py_ssize_t max_entries=1 << 17):
        if PyBytes_GET_SIZE(server_id) != 4:
            raise ValueError("server id: 4 bytes")
        self.server_id = server_id
        memcpy(self.sid, PyBytes_AS_STRING(server_id), 4)
        self.check = check
        self.source = source
        self.max_entries = max_entries
        self.entries = {}
        memset(self.relay_addr, 0, 4)
        self.relay_dest = BROADCAST

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries.clear()

    def add(self, bytes key not None, bytes offer not None, Py_ssize_t end, bytes yiaddr not None,
            echo_uuid, owner, checked):
        """See _wire_py.FastResponder.add."""
        cdef const unsigned char* o = <const unsigned char*>PyBytes_AS_STRING(offer)
        if not (OFF_OPTIONS + 3 <= end < PyBytes_GET_SIZE(offer) and o[end] == OPT_END
                and o[OFF_REPLY_TYPE] == DHCPOFFER and PyBytes_GET_SIZE(yiaddr) == 4):
            raise ValueError("not a reply template")
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        cdef FastEntry entry = FastEntry.__new__(FastEntry)
        entry.offer = offer
        entry.end = end
        entry.yiaddr = yiaddr
        entry.echo_uuid = bool(echo_uuid)
        entry.owner = owner
        entry.checked = checked
        self.entries[key] = entry

    def respond(self, bytes data not None):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        # Offset of the length byte of each FAST_READ option (0: absent), by READ_SLOT.
        cdef Py_ssize_t at[16]
        cdef Py_ssize_t i, end, a, klen, size, pos
        cdef int code, slot, mtype, reply_type
        if n < MIN_PACKET or p[0] != BOOTREQUEST or p[1] != 1 or p[2] != 6:
            return None
        if _u32(p + OFF_COOKIE) != MAGIC_COOKIE:
            return None
        memset(at, 0, sizeof(at))
        i = OFF_OPTIONS
        while i < n:
            code = p[i]
            if code == OPT_PAD:
                i += 1
                continue
            if code == OPT_END:
                break
            if i + 1 >= n:
                return None
            end = i + 2 + p[i + 1]
            if end > n or code == OPT_OVERLOAD:
                return None
            slot = READ_SLOT[code]
            if slot:
                if at[slot]:
                    return None
                at[slot] = i + 1
            i = end
        a = at[READ_SLOT[OPT_MESSAGE_TYPE]]
        if a == 0 or p[a] != 1:
            return None
        mtype = p[a + 1]
        if mtype == DHCPDISCOVER:
            reply_type = DHCPOFFER
        elif mtype == DHCPREQUEST:
            reply_type = DHCPACK
        else:
            return None
        # The key: hwaddr, then 77, 60, 93 (absent: 0; present: 1, length, value).
        cdef Py_ssize_t a77 = at[READ_SLOT[OPT_USER_CLASS]]
        cdef Py_ssize_t a60 = at[READ_SLOT[OPT_VENDOR_CLASS]]
        cdef Py_ssize_t a93 = at[READ_SLOT[OPT_CLIENT_ARCH]]
        klen = 6 + (2 + p[a77] if a77 else 1) + (2 + p[a60] if a60 else 1) + (2 + p[a93] if a93 else 1)
        cdef bytes key = PyBytes_FromStringAndSize(NULL, klen)
        cdef unsigned char* k = <unsigned char*>PyBytes_AS_STRING(key)
        memcpy(k, p + OFF_CHADDR, 6)
        pos = _key_part(k, 6, p, a77)
        pos = _key_part(k, pos, p, a60)
        _key_part(k, pos, p, a93)
        cdef PyObject* found = PyDict_GetItem(self.entries, key)
        if found is NULL:
            return None
        cdef FastEntry entry = <FastEntry>found
        cdef object revision = None
        if self.source is not None:
            revision = self.source.revision
        if revision is None or entry.checked is None or (
                entry.checked is not revision and entry.checked != revision):
            if not self.check(entry.owner):
                self.entries.pop(key, None)
                return None
            entry.checked = revision
        cdef const unsigned char* yi = <const unsigned char*>PyBytes_AS_STRING(entry.yiaddr)
        cdef const unsigned char* req
        cdef bint ci_set = _u32(p + OFF_CIADDR) != 0
        cdef bint gi_set = _u32(p + OFF_GIADDR) != 0
        if reply_type == DHCPACK:
            a = at[READ_SLOT[OPT_SERVER_ID]]
            if a and (p[a] != 4 or memcmp(p + a + 1, self.sid, 4) != 0):
                return None
            a = at[READ_SLOT[OPT_REQUESTED_IP]]
            if a and p[a]:
                if p[a] != 4:
                    return None
                req = p + a + 1
            else:
                req = p + OFF_CIADDR
            if _u32(req) != 0 and memcmp(req, yi, 4) != 0:
                return None
        cdef Py_ssize_t a97 = 0, a61 = at[READ_SLOT[OPT_CLIENT_ID]], a82 = 0
        if entry.echo_uuid:
            a97 = at[READ_SLOT[OPT_CLIENT_UUID]]
            if a97 and (p[a97] != 17 or p[a97 + 1] != 0):
                return None
        if gi_set:
            a82 = at[READ_SLOT[OPT_RELAY_AGENT]]
        size = entry.end + 1
        if a97:
            size += 19
        if a61:
            size += 2 + p[a61]
        if a82:
            size += 2 + p[a82]
        if size < MIN_REPLY:
            size = MIN_REPLY
        cdef bytes result = PyBytes_FromStringAndSize(NULL, size)
        cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(result)
        pos = entry.end
        memcpy(out, PyBytes_AS_STRING(entry.offer), pos)
        memcpy(out + OFF_XID, p + OFF_XID, 4)
        memcpy(out + OFF_FLAGS, p + OFF_FLAGS, 2)
        if reply_type == DHCPACK:
            memcpy(out + OFF_CIADDR, p + OFF_CIADDR, 4)
        memcpy(out + OFF_GIADDR, p + OFF_GIADDR, 4)
        memcpy(out + OFF_CHADDR, p + OFF_CHADDR, CHADDR_LEN)
        out[OFF_REPLY_TYPE] = <unsigned char>reply_type
        pos = _echo(out, pos, p, a97)
        pos = _echo(out, pos, p, a61)
        pos = _echo(out, pos, p, a82)
        out[pos] = OPT_END
        pos += 1
        if pos < size:
            memset(out + pos, 0, size - pos)
        if gi_set:
            if memcmp(self.relay_addr, p + OFF_GIADDR, 4) != 0 or self.relay_dest is BROADCAST:
                self.relay_dest = (_ntoa(p + OFF_GIADDR), 67)
                memcpy(self.relay_addr, p + OFF_GIADDR, 4)
            return (result, self.relay_dest)
        if ci_set:
            return (result, (_ntoa(p + OFF_CIADDR), 68))
        return (result, BROADCAST)
