"""The DHCPv4 wire format (RFC 2131 section 2, RFC 2132, RFC 3396): one source of truth.

Both codecs (the Cython ``_wire_c`` and the pure-Python ``_wire_py``) take
their layout, limits and error messages from here, and both return the
``DhcpPacket`` defined here, so a differential test can compare them with ``==``.

Parsing rules (what ``parse_untrusted`` accepts), in order:

1. At least ``MIN_PACKET`` bytes (236-byte fixed header + 4-byte magic cookie),
   ``hlen`` <= 16, and the cookie is ``MAGIC_COOKIE``.
2. Options start after the cookie. PAD (0) is skipped; END (255) ends the area
   and anything after it is ignored (clients pad with junk); running off the
   end without END is accepted. A length byte missing or a value running past
   the end is ``BadPacket``.
3. An option that appears more than once is one option whose value is the
   concatenation of the pieces in order (RFC 3396 section 7).
4. Option overload (52, RFC 2132 section 9.3) must be one byte 1, 2 or 3. The
   ``file`` field (1 or 3) and then the ``sname`` field (2 or 3) are parsed as
   further option areas and concatenated after the options field (RFC 3396
   section 5); the overloaded fields read back as ``b""``. Option 52 inside an
   overloaded field is ignored (no recursion).
5. Option 53 (message type), when present, must be exactly one byte.
   Everything else is kept as raw bytes: the boot policy interprets it.

Building (``build_reply``): a BOOTREPLY with the request's htype, hlen, xid,
flags, giaddr and chaddr; ``hops`` and ``secs`` zero; option 53 first, then the
given options in order (values longer than 255 bytes are split into several
instances, RFC 3396 section 6), END, then PAD up to ``MIN_REPLY`` bytes
(the BOOTP minimum some PXE ROMs still insist on).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# op(1) htype(1) hlen(1) hops(1) xid(4) secs(2) flags(2) ciaddr(4) yiaddr(4)
# siaddr(4) giaddr(4) chaddr(16) sname(64) file(128) magic cookie(4)
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128sI")
OFF_XID = 4
OFF_SECS = 8
OFF_FLAGS = 10
OFF_CIADDR = 12
OFF_YIADDR = 16
OFF_SIADDR = 20
OFF_GIADDR = 24
OFF_CHADDR = 28
OFF_SNAME = 44
OFF_FILE = 108
OFF_COOKIE = 236
OFF_OPTIONS = 240
SNAME_LEN = 64
FILE_LEN = 128
CHADDR_LEN = 16
MIN_PACKET = OFF_OPTIONS
MIN_REPLY = 300
MAGIC_COOKIE = 0x63825363

BOOTREQUEST = 1
BOOTREPLY = 2
FLAG_BROADCAST = 0x8000

# Message types (option 53, RFC 2132 section 9.6).
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

# Option codes used by cwboot.
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN = 15
OPT_VENDOR_SPECIFIC = 43  # PXE: encapsulated vendor options (RFC 2132 8.4, PXE spec 2.4)
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_LIST = 55
OPT_MAX_SIZE = 57
OPT_RENEWAL_TIME = 58
OPT_REBINDING_TIME = 59
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77  # RFC 3004 (iPXE sends the raw string "iPXE" instead)
OPT_RELAY_AGENT = 82  # RFC 3046: copied back byte-exact, last before END
OPT_CLIENT_ARCH = 93  # RFC 4578 2.1
OPT_CLIENT_NDI = 94  # RFC 4578 2.2
OPT_CLIENT_UUID = 97  # RFC 4578 2.3
OPT_IPXE = 175  # iPXE encapsulated options
OPT_END = 255

IPXE_NO_PXEDHCP = 176  # 175.176 = 1: do not wait for proxyDHCP

OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2

# Error messages: both backends raise BadPacket with exactly these texts.
ERR_SHORT = "shorter than the 240-byte header"
ERR_HLEN = "hlen larger than 16"
ERR_COOKIE = "bad magic cookie"
ERR_OPT_TRUNCATED = "option length past the end"
ERR_OVERLOAD = "bad option 52 (overload)"
ERR_MESSAGE_TYPE = "bad option 53 (message type)"
# Raised (ValueError) by the builders: PAD and END carry no value.
ERR_OPTION_CODE = "option codes are 1..254"


class BadPacket(ValueError):
    """A datagram that is not a DHCPv4 packet we can read. The only error parse_untrusted raises."""


class DhcpPacket(NamedTuple):
    """One parsed DHCPv4 packet. Addresses are the 4 raw bytes; ``options`` maps code -> value.

    A NamedTuple: the codecs build one per datagram with ``tuple.__new__``, several
    times cheaper than a class ``__init__`` with 17 arguments.
    """

    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    # All 16 bytes as received; ``mac`` is the first ``hlen`` as aa:bb:cc:dd:ee:ff.
    chaddr: bytes
    # Raw fields (NUL padding kept); b"" when overloaded with options.
    sname: bytes
    file: bytes
    options: dict[int, bytes]
    # Option 53, 0 when absent (plain BOOTP).
    message_type: int
    mac: str


# -- The respond fast path (``FastResponder`` in both backends) ------------------
#
# A ``FastResponder`` holds reply templates compiled by the boot policy
# (cwboot.policy.dhcp.FastPath) and answers a request with one call,
# ``respond(data) -> (reply, (address, port)) | None``, by choosing a template and
# copying the request's own fields into it. It never decides anything: the
# templates are replies the policy decided and the ordinary ``build_reply``
# built; ``None`` ("declined") sends the datagram down the full path
# (parse_untrusted -> BootPolicy.decide -> build_reply -> send_decision), which
# then answers, drops with a counted reason, or teaches the fast path a template.
#
# It declines, in this order:
#
# 1. shorter than MIN_PACKET, op != BOOTREQUEST, htype != 1, hlen != 6, bad cookie;
# 2. while reading the options field (not sname/file): a value running past the
#    end, option 52 (overload) anywhere, or a second instance of any of
#    FAST_READ (so no RFC 3396 concatenation is ever needed); PAD is skipped,
#    END ends the area, a missing END is accepted (as parse_untrusted);
# 3. option 53 absent, not one byte, or not DISCOVER/REQUEST;
# 4. no template under ``fast_key`` (chaddr[:6] and the raw 77/60/93, the
#    policy's own memo key), or the cache changed since the template was last
#    checked (its ``revision``) and the policy's check says the node or its
#    naming pool is no longer the one the template was built from (the template
#    is then dropped);
# 5. REQUEST: option 54 present and not this server's id; the requested address
#    (option 50 if non-empty, else ciaddr) neither 0.0.0.0 nor the template's
#    yiaddr (the full path NAKs; it must be 4 bytes to match);
# 6. a template that echoes option 97 (PXE and HTTP clients) and a 97 that is
#    not 17 bytes starting with 0 (the full path answers with a warning).
#
# The reply is the template's bytes up to its END with xid, flags, giaddr and
# chaddr (all 16 bytes) copied from the request, ciaddr copied for a REQUEST,
# option 53 set to OFFER or ACK, then 97 (when echoed), 61 (when present), 82
# (when present and giaddr is set), END and PAD up to MIN_REPLY: exactly what
# ``build_reply`` makes of the policy's option list. The destination is RFC 2131
# 4.1's (``send_decision``): giaddr:67, else ciaddr:68, else
# 255.255.255.255:68 (the broadcast flag, or "unicast to chaddr", which the
# service broadcasts).
FAST_READ = (
    OPT_REQUESTED_IP, OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_VENDOR_CLASS, OPT_CLIENT_ID,
    OPT_USER_CLASS, OPT_RELAY_AGENT, OPT_CLIENT_ARCH, OPT_CLIENT_UUID,
)  # fmt: skip
# Option 53 sits at a fixed place in every reply build_reply makes.
OFF_REPLY_TYPE = OFF_OPTIONS + 2


def fast_key(hwaddr: bytes, user_class: bytes | None, vendor_class: bytes | None,
             client_arch: bytes | None) -> bytes | None:  # fmt: skip
    """The template key: 6-byte hwaddr, then for 77, 60, 93: ``\\0`` if absent, else 1, length, value.

    None when a value is longer than one option instance (255 bytes): the fast
    path, which declines repeated options, can never look such a key up.
    """
    out = bytearray(hwaddr)
    for value in (user_class, vendor_class, client_arch):
        if value is None:
            out.append(0)
        elif len(value) > 255:
            return None
        else:
            out += bytes((1, len(value)))
            out += value
    return bytes(out)
