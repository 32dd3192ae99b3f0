# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython DHCPv4 codec: the fast path of cwboot.protocol.dhcp.

It implements the rules written in cwboot/protocol/dhcp/_spec.py and takes
every constant, limit, error text and the DhcpPacket class from there at import
time, so the wire format has one source of truth; the differential tests check
that it returns exactly what cwboot/protocol/dhcp/_wire_py.py returns.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy, memset

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
