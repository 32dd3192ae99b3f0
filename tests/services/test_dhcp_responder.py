"""The service's per-datagram work never raises, whatever arrives (h11's fuzz invariant, one level up).

Random packet-shaped datagrams, and requests from a known MAC with random policy
options (so they reach the boot policy), go through ``DhcpResponder.respond``: each is answered or counted
as dropped with a reason, and nothing escapes.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwboot.control.objects import validate_new
from cwboot.policy.dhcp import BootPolicy
from cwboot.policy.node_table import NodeTable
from cwboot.protocol.dhcp import parse_untrusted
from cwboot.services.dhcp import DhcpResponder, DhcpStats
from tests.protocol.dhcp_helpers import request_bytes
from tests.protocol.test_dhcp_wire import packets

MAC = bytes.fromhex("525400000007")


def responder(mode: str) -> DhcpResponder:
    pool = validate_new("naming_pool", {"name": "default", "network": "10.54.0.0/16"}, 0.0)
    node = {**validate_new("node", {"index": 7, "mac": [MAC.hex(":")]}, 0.0), "name": "n7"}
    policy = BootPolicy(head_address="10.54.0.1", http_port=8081, mode=mode, unknown_mac="enrol")
    r = DhcpResponder(policy, NodeTable([node], [pool]), DhcpStats())
    r.to_enrol = None
    return r


RESPONDERS = {mode: responder(mode) for mode in ("authoritative", "proxy")}

# Options the policy reads, with values that are right, odd or hostile.
policy_option = st.tuples(
    st.sampled_from([43, 50, 54, 55, 57, 60, 61, 77, 82, 93, 94, 97, 175]),
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"iPXE", b"\x04iPXE", b"PXEClient:Arch:00007", b"HTTPClient:Arch:00016",
                         b"\x00\x07", b"\x00\x0b", b"\x00", bytes((10, 54, 0, 1)), bytes((10, 54, 0, 107)),
                         b"\x00" + bytes(16)]),
    ),
)  # fmt: skip


@st.composite
def known_requests(draw: st.DrawFn) -> bytes:
    return request_bytes(
        mac=MAC.hex(":"),
        flags=draw(st.sampled_from([0, 0x8000])),
        ciaddr=draw(st.sampled_from(["0.0.0.0", "10.54.0.107"])),
        giaddr=draw(st.sampled_from(["0.0.0.0", "10.1.0.1"])),
        options=[
            (53, bytes((draw(st.sampled_from([1, 1, 3, 3, 8, 7, 4, 2])),))),
            *draw(st.sampled_from([[], [(60, b"PXEClient:Arch:00000:UNDI:002001")]])),
            *draw(st.lists(policy_option, max_size=8)),
        ],
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets(), st.sampled_from(["authoritative", "proxy"]), st.booleans())
def test_random_datagrams_are_answered_or_counted(
    data: bytes, mode: str, boot_server: bool
) -> None:
    check(data, mode, boot_server)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(known_requests(), st.sampled_from(["authoritative", "proxy"]), st.booleans())
def test_known_node_requests_are_answered_or_counted(
    data: bytes, mode: str, boot_server: bool
) -> None:
    check(data, mode, boot_server)


def check(data: bytes, mode: str, boot_server: bool) -> None:
    r = RESPONDERS[mode]
    before = (r.stats.received, sum(r.stats.replied.values()), sum(r.stats.dropped.values()))
    out = r.respond(data, ("10.54.0.9", 68), boot_server)
    after = (r.stats.received, sum(r.stats.replied.values()), sum(r.stats.dropped.values()))
    assert after[0] == before[0] + 1
    if out is None:
        assert after[2] == before[2] + 1 and after[1] == before[1]
    else:
        reply, (address, port) = out
        assert after[1] == before[1] + 1 and after[2] == before[2]
        assert parse_untrusted(reply).op == 2 and isinstance(address, str) and port in (67, 68)


class BrokenCache:
    """A lookup whose entries make the policy fail: a bug must be counted, not crash the loop."""

    def node_by_mac(self, mac: str) -> dict[str, object]:
        return {"name": 7, "mac": [mac]}  # name not a string

    def get(self, kind: str, ref: str) -> None:
        return None

    def node_ip(self, node: object) -> str:
        return "10.54.0.300"


def test_a_broken_lookup_is_counted_as_internal_error() -> None:
    stats = DhcpStats()
    r = DhcpResponder(BootPolicy(head_address="10.54.0.1", http_port=8081), BrokenCache(), stats)  # type: ignore[arg-type]
    assert (
        r.respond(request_bytes(mac=MAC.hex(":"), options=[(53, b"\x01")]), ("0.0.0.0", 68), False)
        is None
    )
    assert stats.dropped == {"internal error": 1}
