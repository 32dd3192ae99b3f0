"""Send IPv6 router advertisements on one interface of the test's namespace.

iPXE configures IPv4 (DHCP) and IPv6 (SLAAC) together and only moves on when both
are done; with no router on the link it waits ~10 s for an advertisement. The
VM harness runs this inside its namespace so that every stack under test
(cwboot and the dnsmasq + nginx baseline) sees the same link: an advertisement
with router lifetime 0, no prefix and neither M nor O flag, which tells iPXE
there is nothing to configure over IPv6.

Run: ``ip netns exec NS python -m tests.vm.router_advert br0 SECONDS``. It stops
by itself after SECONDS.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

# RFC 4861 4.2: type 134, code 0, checksum (filled by the kernel for ICMPv6 raw sockets),
# cur hop limit, flags (M, O), router lifetime (s), reachable time (ms), retrans timer (ms).
ROUTER_ADVERT = struct.Struct("!BBHBBHII")
ALL_NODES = "ff02::1"


def advertisement() -> bytes:
    return ROUTER_ADVERT.pack(134, 0, 0, 64, 0, 0, 0, 0)


def main(interface: str, seconds: float) -> None:
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendto(advertisement(), (ALL_NODES, 0, 0, index))
        except OSError:
            pass  # no link-local address yet (no VM on the bridge): try again shortly
        time.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
