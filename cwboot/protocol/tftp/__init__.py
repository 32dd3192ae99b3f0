"""TFTP, sans-IO (RFC 1350, 2347, 2348, 2349, 7440): wire format, options, sources, transfers.

The public names live in private modules and are re-exported here; the trio
service (cwboot.services.tftp) is a thin loop around :class:`ReadTransfer`.
"""

from cwboot.protocol.tftp._client import ClientState, ReadClient
from cwboot.protocol.tftp._options import (
    DEFAULT_BLKSIZE,
    ETHERNET_BLKSIZE,
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    Limits,
    Negotiated,
    negotiate_untrusted,
)
from cwboot.protocol.tftp._source import (
    DEBIAN_IPXE_LOADERS,
    BytesSource,
    ContentCache,
    FileSource,
    NetasciiSource,
    ResponseSource,
    SharedContent,
    open_in_root_untrusted,
    safe_relative_path_untrusted,
)
from cwboot.protocol.tftp._transfer import Outcome, Output, ReadTransfer, State, TransferStats
from cwboot.protocol.tftp._wire import (
    Ack,
    BadPacket,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    ReadRequest,
    build_ack,
    build_data,
    build_error,
    build_oack,
    build_request,
    parse_packet_untrusted,
    parse_request_untrusted,
)

__all__ = [
    "DEBIAN_IPXE_LOADERS",
    "DEFAULT_BLKSIZE",
    "ETHERNET_BLKSIZE",
    "MAX_BLKSIZE",
    "MIN_BLKSIZE",
    "Ack",
    "BadPacket",
    "BytesSource",
    "ClientState",
    "ContentCache",
    "Data",
    "Error",
    "ErrorCode",
    "FileSource",
    "Limits",
    "Negotiated",
    "NetasciiSource",
    "Opcode",
    "OptionAck",
    "Outcome",
    "Output",
    "Packet",
    "ReadClient",
    "ReadRequest",
    "ReadTransfer",
    "ResponseSource",
    "SharedContent",
    "State",
    "TransferStats",
    "build_ack",
    "build_data",
    "build_error",
    "build_oack",
    "build_request",
    "negotiate_untrusted",
    "open_in_root_untrusted",
    "parse_packet_untrusted",
    "parse_request_untrusted",
    "safe_relative_path_untrusted",
]
