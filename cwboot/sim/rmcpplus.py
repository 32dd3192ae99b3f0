"""RMCP / RMCP+ (IPMI 2.0 over LAN) wire format and session cryptography, BMC side.

Sans-IO: functions take and return bytes. Everything that reads a datagram is
named ``*_untrusted`` and raises only ``BadPacket``.

Layouts (IPMI 2.0 spec section 13):

    RMCP header (13.1.3)         06 00 ff 07
    IPMI 1.5 session (13.6)      authtype(0) seq(4) session_id(4) length(1) payload
    IPMI 2.0 session (13.6)      authtype(6) payload_type(1) session_id(4) seq(4) length(2 LE)
                                 payload [integrity pad 0xff.., pad length, next header 07, auth code]
    IPMI LAN message (13.8)      rsSA netFn/rsLUN chk1 rqSA rqSeq/rqLUN cmd data.. chk2

Cipher suites (22.15.2): 3 = HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128 and
17 = HMAC-SHA256 / HMAC-SHA256-128 / AES-CBC-128. Both use AES-CBC-128, so
every established session is authenticated and encrypted; suite 0 (no
authentication) is never offered.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class BadPacket(Exception):
    """A datagram that is not a well-formed RMCP/IPMI packet (or fails its integrity check)."""


RMCP_HEADER = b"\x06\x00\xff\x07"
AUTHTYPE_NONE = 0x00
AUTHTYPE_RMCPPLUS = 0x06

# RMCP+ payload types (13.27.3).
PAYLOAD_IPMI = 0x00
PAYLOAD_OPEN_SESSION_REQUEST = 0x10
PAYLOAD_OPEN_SESSION_RESPONSE = 0x11
PAYLOAD_RAKP1 = 0x12
PAYLOAD_RAKP2 = 0x13
PAYLOAD_RAKP3 = 0x14
PAYLOAD_RAKP4 = 0x15
PAYLOAD_ENCRYPTED = 0x80
PAYLOAD_AUTHENTICATED = 0x40

# IPMI 1.5 session header: authtype, sequence, session id, payload length.
V15_HEADER = struct.Struct("<BIIB")
# IPMI 2.0 session header: authtype, payload type, session id, sequence, payload length.
V20_HEADER = struct.Struct("<BBIIH")

# RMCP+ / RAKP status codes (table 13-15).
STATUS_OK = 0x00
STATUS_NO_RESOURCES = 0x01
STATUS_INVALID_SESSION_ID = 0x02
STATUS_UNAUTHORIZED_ROLE = 0x09
STATUS_UNAUTHORIZED_NAME = 0x0D
STATUS_INVALID_INTEGRITY_VALUE = 0x0F
STATUS_NO_CIPHER_SUITE_MATCH = 0x11


@dataclass(frozen=True)
class CipherSuite:
    """One RMCP+ cipher suite: algorithm numbers (tables 13-17..13-19) and the hash behind them."""

    number: int
    auth_alg: int
    integrity_alg: int
    conf_alg: int
    hash_name: str
    # Bytes of the truncated HMAC in packets and in RAKP4's integrity check value.
    icv_len: int

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash_name).digest()


SUITE_3 = CipherSuite(3, auth_alg=1, integrity_alg=1, conf_alg=1, hash_name="sha1", icv_len=12)
SUITE_17 = CipherSuite(17, auth_alg=3, integrity_alg=4, conf_alg=1, hash_name="sha256", icv_len=16)
SUITES = {s.number: s for s in (SUITE_3, SUITE_17)}


def suite_for(
    auth_alg: int, integrity_alg: int, conf_alg: int, offered: tuple[int, ...]
) -> CipherSuite | None:
    """The offered suite with exactly these algorithms, or None (suite 0 is never offered)."""
    for number in offered:
        s = SUITES[number]
        if (s.auth_alg, s.integrity_alg, s.conf_alg) == (auth_alg, integrity_alg, conf_alg):
            return s
    return None


def cipher_suite_records(offered: tuple[int, ...]) -> bytes:
    """Get Channel Cipher Suites records (22.15): c0 id auth 0x40|integrity 0x80|conf per suite."""
    out = bytearray()
    for number in offered:
        s = SUITES[number]
        out += bytes([0xC0, s.number, s.auth_alg, 0x40 | s.integrity_alg, 0x80 | s.conf_alg])
    return bytes(out)


def checksum(data: bytes) -> int:
    """IPMI checksum: two's complement of the byte sum (13.8)."""
    return -sum(data) & 0xFF


@dataclass
class Datagram:
    """A parsed RMCP datagram. ``payload`` is decrypted; integrity was already checked."""

    authtype: int
    payload_type: int
    session_id: int
    sequence: int
    payload: bytes


@dataclass
class IpmiRequest:
    rq_addr: int
    rq_seq: int
    rq_lun: int
    rs_lun: int
    netfn: int
    cmd: int
    data: bytes


def parse_header_untrusted(data: bytes) -> Datagram:
    """Parse the session header of an RMCP datagram without checking integrity.

    For an authenticated RMCP+ datagram ``payload`` is still the raw (maybe
    encrypted) payload; ``SessionKeys.open_untrusted`` does the rest.
    """
    if len(data) < 4 + V15_HEADER.size or data[:4] != RMCP_HEADER:
        raise BadPacket("not an RMCP/IPMI datagram")
    authtype = data[4]
    if authtype == AUTHTYPE_NONE:
        _, seq, sid, length = V15_HEADER.unpack_from(data, 4)
        start = 4 + V15_HEADER.size
        if len(data) < start + length:
            raise BadPacket("IPMI 1.5 payload shorter than its length field")
        return Datagram(authtype, PAYLOAD_IPMI, sid, seq, bytes(data[start : start + length]))
    if authtype == AUTHTYPE_RMCPPLUS:
        if len(data) < 4 + V20_HEADER.size:
            raise BadPacket("truncated RMCP+ header")
        _, ptype, sid, seq, length = V20_HEADER.unpack_from(data, 4)
        start = 4 + V20_HEADER.size
        if len(data) < start + length:
            raise BadPacket("RMCP+ payload shorter than its length field")
        if ptype & 0x3F == 0x02:
            raise BadPacket("OEM payloads are not supported")
        return Datagram(authtype, ptype, sid, seq, bytes(data[start : start + length]))
    raise BadPacket(f"unsupported authentication type {authtype}")


def parse_ipmi_request_untrusted(payload: bytes) -> IpmiRequest:
    """An IPMI LAN request message (13.8), checksums verified."""
    if len(payload) < 7:
        raise BadPacket("IPMI message shorter than 7 bytes")
    if checksum(payload[:2]) != payload[2] or checksum(payload[3:-1]) != payload[-1]:
        raise BadPacket("IPMI message checksum mismatch")
    return IpmiRequest(
        rq_addr=payload[3],
        rq_seq=payload[4] >> 2,
        rq_lun=payload[4] & 3,
        rs_lun=payload[1] & 3,
        netfn=payload[1] >> 2,
        cmd=payload[5],
        data=bytes(payload[6:-1]),
    )


def encode_ipmi_response(req: IpmiRequest, code: int, data: bytes = b"") -> bytes:
    """The response message to ``req``: completion code then data (13.8, table 5-2 codes)."""
    head = bytes([req.rq_addr, ((req.netfn | 1) << 2) | req.rq_lun])
    body = bytes([0x20, (req.rq_seq << 2) | req.rs_lun, req.cmd, code]) + data
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])


def encode_v15(payload: bytes) -> bytes:
    """A sessionless IPMI 1.5 datagram (authtype none), e.g. Get Channel Auth Capabilities."""
    return RMCP_HEADER + V15_HEADER.pack(AUTHTYPE_NONE, 0, 0, len(payload)) + payload


def encode_v20_clear(payload_type: int, payload: bytes, session_id: int = 0) -> bytes:
    """An unauthenticated RMCP+ datagram: open session response, RAKP 2 and 4."""
    return (
        RMCP_HEADER
        + V20_HEADER.pack(AUTHTYPE_RMCPPLUS, payload_type, session_id, 0, len(payload))
        + payload
    )


@dataclass
class SessionKeys:
    """Keys derived at RAKP3 (13.31-13.32): SIK, K1 (integrity), K2[:16] (AES)."""

    suite: CipherSuite
    k1: bytes
    aes_key: bytes

    @classmethod
    def derive(cls, suite: CipherSuite, kg: bytes, sik_input: bytes) -> tuple[SessionKeys, bytes]:
        """-> (keys, SIK). K1/K2 use 20-byte constants for both suites, as ipmitool and pyghmi do."""
        sik = suite.hmac(kg, sik_input)
        k1 = suite.hmac(sik, b"\x01" * 20)
        k2 = suite.hmac(sik, b"\x02" * 20)
        return cls(suite, k1, k2[:16]), sik

    def seal(self, payload_type: int, session_id: int, sequence: int, payload: bytes) -> bytes:
        """An authenticated, encrypted RMCP+ datagram (13.28, table 13-20 padding)."""
        pad = 16 - (len(payload) + 1) % 16
        if pad == 16:
            pad = 0
        clear = payload + bytes(range(1, pad + 1)) + bytes([pad])
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(self.aes_key), modes.CBC(iv)).encryptor()
        body = iv + enc.update(clear) + enc.finalize()
        ptype = payload_type | PAYLOAD_ENCRYPTED | PAYLOAD_AUTHENTICATED
        msg = bytearray(
            V20_HEADER.pack(AUTHTYPE_RMCPPLUS, ptype, session_id, sequence, len(body)) + body
        )
        # Integrity pad: authtype..next-header is a multiple of 4 bytes.
        ipad = (4 - (len(msg) + 2) % 4) % 4
        msg += b"\xff" * ipad + bytes([ipad, 0x07])
        msg += self.suite.hmac(self.k1, bytes(msg))[: self.suite.icv_len]
        return RMCP_HEADER + bytes(msg)

    def open_untrusted(self, data: bytes, dgram: Datagram) -> bytes:
        """Check the auth code of a session datagram and return its decrypted payload."""
        if not dgram.payload_type & PAYLOAD_AUTHENTICATED:
            raise BadPacket("session packet without integrity")
        n = self.suite.icv_len
        if len(data) < 4 + V20_HEADER.size + n + 2:
            raise BadPacket("session packet too short for its auth code")
        expected = self.suite.hmac(self.k1, bytes(data[4:-n]))[:n]
        if not hmac.compare_digest(expected, bytes(data[-n:])):
            raise BadPacket("bad integrity check value")
        payload = dgram.payload
        if not dgram.payload_type & PAYLOAD_ENCRYPTED:
            raise BadPacket("session packet without confidentiality")
        if len(payload) < 32 or len(payload) % 16:
            raise BadPacket("encrypted payload is not IV + whole AES blocks")
        dec = Cipher(algorithms.AES(self.aes_key), modes.CBC(payload[:16])).decryptor()
        clear = dec.update(payload[16:]) + dec.finalize()
        pad = clear[-1]
        if pad > 15:
            raise BadPacket("bad confidentiality pad length")
        return clear[: -pad - 1]
