"""The respond fast path (FastPath / FastResponder) against the full path, both backends.

The full path is parse_untrusted -> BootPolicy.decide -> build_reply ->
send_decision. The fast path answers from templates the policy compiled
(``FastPath.learn``) or declines (None). Invariants, checked for generated
request sequences in every session:

- whenever the fast path answers, the answer (bytes and destination) is the
  full path's, whatever was learned before (templates are reused across
  requests that share a MAC and options 77/60/93);
- the Cython and the pure-Python FastResponder give the same answer or both
  decline;
- after a change of the node table, no stale answer (the node's new address).

Plus: the common requests (PXE ROM, iPXE, UEFI HTTP, udhcpc, relayed with 82,
client id) are answered by the fast path once learned, and the golden captures
give the same bytes through it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwboot.control.objects import validate_new
from cwboot.policy.dhcp import BootPolicy, FastPath, Reply, send_decision
from cwboot.policy.node_table import NodeTable
from cwboot.protocol.dhcp import BadPacket, _wire_py
from tests.protocol.dhcp_helpers import cython_codec, pxe_options, request_bytes
from tests.protocol.test_dhcp_golden import CASES, render, table

_wire_c = cython_codec()
BACKENDS = (_wire_c, _wire_py)

SERVER = "10.54.0.1"
SERVER_ID = bytes((10, 54, 0, 1))
MACS = [f"52:54:00:00:00:{i:02x}" for i in (1, 2, 3, 4)]
UNKNOWN = ["52:54:00:00:01:01", "00:0c:01:02:03:04"]


def nodes() -> NodeTable:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.54.0.0/16", "ip_offset": 100}, 0.0
    )
    docs = [
        {**validate_new("node", {"index": i, "mac": [mac]}, 0.0), "name": f"n{i}"}
        for i, mac in enumerate(MACS[:3])
    ]
    # One node with an explicit address.
    docs.append(
        {**validate_new("node", {"index": 9, "mac": [MACS[3]], "ip": "10.54.9.9"}, 0.0), "name": "n9"}
    )
    return NodeTable(docs, [pool])


def new_policy() -> BootPolicy:
    return BootPolicy(
        head_address=SERVER, http_port=8081, router="10.54.0.254", dns_servers=["10.54.0.2"],
        domain="cluster", lease_time=7200,
    )  # fmt: skip


def full_path(
    policy: BootPolicy, lookup: Any, data: bytes
) -> tuple[tuple[bytes, tuple[str, int]] | None, Any]:
    """The service's full path (without counters): the answer and the parsed request."""
    try:
        request = _wire_py.parse_untrusted(data)
    except BadPacket:
        return None, None
    decision = policy.decide(request, lookup)
    if not isinstance(decision, Reply):
        return None, request
    reply = _wire_py.build_reply(
        request, decision.message_type, decision.ciaddr, decision.yiaddr, decision.siaddr,
        decision.sname, decision.file, decision.options,
    )  # fmt: skip
    dest = send_decision(request, decision.message_type, ("10.54.0.200", 68))
    return (reply, (dest.address, dest.port)), request


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


# -- generated requests

ADDRESSES = ["10.54.0.100", "10.54.0.101", "10.54.9.9", "10.54.0.77", "0.0.0.0"]

OPTION_VALUES: dict[int, st.SearchStrategy[bytes]] = {
    50: st.one_of(st.sampled_from([ip(a) for a in ADDRESSES] + [b"", b"\x0a\x36\x00"]),
                  st.binary(max_size=6)),
    54: st.sampled_from([SERVER_ID, SERVER_ID, ip("10.54.0.3"), b"", b"\x0a\x36\x00"]),
    55: st.binary(max_size=20),
    60: st.one_of(st.sampled_from([b"PXEClient:Arch:00000:UNDI:002001", b"PXEClient:Arch:00007:UNDI:003016",
                                   b"HTTPClient:Arch:00016:UNDI:003001", b"PXEClient", b"udhcp 1.35.0",
                                   b"HTTPClient"]), st.binary(max_size=40)),
    61: st.one_of(st.sampled_from([b"\x01RT\x00\x00\x00\x01", b""]), st.binary(max_size=255)),
    77: st.one_of(st.sampled_from([b"iPXE", b"\x04iPXE", b"\x03foo\x04iPXE", b"gPXE"]), st.binary(max_size=12)),
    82: st.one_of(st.sampled_from([b"\x01\x06eth0/1\x02\x04\xde\xad\xbe\xef", b""]), st.binary(max_size=60)),
    93: st.one_of(st.sampled_from([b"\x00\x00", b"\x00\x07", b"\x00\x09", b"\x00\x0b", b"\x00\x10",
                                   b"\x00\x13", b"\x00", b"\x00\x63", b"\x00\x07\x00\x00"]),
                  st.binary(max_size=5)),
    97: st.one_of(st.sampled_from([b"\x00" + bytes(range(16)), b"\x01" + bytes(16), b"\x00" * 5]),
                  st.binary(max_size=18)),
    175: st.binary(max_size=10),
}  # fmt: skip


# A client: its MAC and the options that pick its boot file (77, 60, 93), mostly well-formed.
profiles = st.tuples(
    st.sampled_from(MACS + MACS + UNKNOWN),
    st.one_of(st.none(), st.none(), st.sampled_from([b"iPXE", b"\x04iPXE"]), OPTION_VALUES[77]),
    st.one_of(st.none(), st.sampled_from([b"PXEClient:Arch:00000:UNDI:002001",
                                          b"PXEClient:Arch:00007:UNDI:003016",
                                          b"HTTPClient:Arch:00016:UNDI:003001"]), OPTION_VALUES[60]),
    st.one_of(st.none(), st.sampled_from([b"\x00\x00", b"\x00\x07", b"\x00\x10"] * 3), OPTION_VALUES[93]),
)  # fmt: skip
# The address each known MAC has in nodes(): what its REQUEST asks for when all is well.
RIGHT = {mac: ip(f"10.54.0.{100 + i}") for i, mac in enumerate(MACS[:3])} | {MACS[3]: ip("10.54.9.9")}


@st.composite
def requests(draw: st.DrawFn, profile: st.SearchStrategy[Any] = profiles) -> bytes:
    mac, user_class, vendor_class, arch = draw(profile)
    mtype = draw(st.sampled_from([b"\x01", b"\x01", b"\x03", b"\x03", b"\x03", b"\x08", b"\x07",
                                  b"\x02", b"\x01\x03", b""]))  # fmt: skip
    codes = draw(st.lists(st.sampled_from([50, 54, 55, 61, 82, 97, 175]), unique=True, max_size=6))
    options = [(53, mtype)] + [(c, draw(OPTION_VALUES[c])) for c in codes]
    if 50 in codes and mac in RIGHT and draw(st.booleans()):
        options[codes.index(50) + 1] = (50, RIGHT[mac])
    options += [(c, v) for c, v in ((77, user_class), (60, vendor_class), (93, arch)) if v is not None]
    options = draw(st.permutations(options))
    if draw(st.integers(0, 9)) == 0 and options:  # a repeated option (RFC 3396 concatenation)
        options.append(draw(st.sampled_from(options)))
    if draw(st.integers(0, 19)) == 0:
        options.append((52, draw(st.sampled_from([b"\x01", b"\x03", b"\x04"]))))
    data = request_bytes(
        mac=mac,
        xid=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from([0, 0x8000, 0x8001, 0x0001])),
        ciaddr=draw(st.sampled_from(ADDRESSES)),
        giaddr=draw(st.sampled_from(["0.0.0.0", "0.0.0.0", "10.1.0.1", "192.168.7.9"])),
        hops=draw(st.integers(0, 3)),
        op=draw(st.sampled_from([1, 1, 1, 1, 1, 2])),
        options=options,
        end=draw(st.integers(0, 4)) > 0,
    )
    corrupt = draw(st.integers(0, 14))
    if corrupt == 0:  # cut anywhere: a length running past the end, or a short packet
        data = data[: draw(st.integers(0, len(data)))]
    elif corrupt == 1:  # any byte changed: a length, htype/hlen, the cookie, ...
        buf = bytearray(data)
        buf[draw(st.integers(1, len(buf) - 1))] = draw(st.integers(0, 255))
        data = bytes(buf)
    elif corrupt == 2:
        data += draw(st.binary(max_size=8))  # junk after END (or more options)
    return data


@st.composite
def sequences(draw: st.DrawFn) -> list[bytes]:
    """Requests from a few clients, so templates learned from one are used for the next."""
    clients = draw(st.lists(profiles, min_size=1, max_size=3))
    return draw(st.lists(requests(st.sampled_from(clients)), min_size=3, max_size=12))


class Pair:
    """One policy, the same node table, a fast path per backend."""

    def __init__(self, lookup: Any = None) -> None:
        self.lookup = lookup if lookup is not None else nodes()
        self.policy = new_policy()
        self.fast = [FastPath(self.policy, self.lookup, backend=b) for b in BACKENDS]

    def step(self, data: bytes) -> tuple[bytes, tuple[str, int]] | None:
        """Fast answers from both backends, then the full path; learn; return the fast answer."""
        answers = [fp.respond(data) for fp in self.fast]
        assert answers[0] == answers[1], "the backends' fast paths disagree"
        full, request = full_path(self.policy, self.lookup, data)
        if answers[0] is not None:
            assert answers[0] == full, "the fast path's answer is not the full path's"
        if full is not None:
            for fp, backend in zip(self.fast, BACKENDS, strict=True):
                fp.learn(backend.parse_untrusted(data))
            again = [fp.respond(data) for fp in self.fast]
            assert again[0] == again[1]
            assert again[0] is None or again[0] == full
        return answers[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences())
def test_fast_path_equals_full_path_for_generated_requests(batch: list[bytes]) -> None:
    pair = Pair()
    for data in batch:
        pair.step(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences(), sequences())
def test_fast_path_follows_node_table_changes(before: list[bytes], after: list[bytes]) -> None:
    """A node's address changes between two sequences: nothing stale afterwards."""
    pair = Pair()
    for data in before:
        pair.step(data)
    # MACS[0] moves to an explicit address (a new document, as the cache would hand out).
    assert isinstance(pair.lookup, NodeTable)
    pair.lookup.add({**validate_new("node", {"index": 0, "mac": [MACS[0]], "ip": "10.54.3.3"}, 0.0),
                     "name": "n0"})  # fmt: skip
    for data in after:
        pair.step(data)


# -- the common requests are answered by the fast path

COMMON = {
    "pxe-bios-discover": request_bytes(mac=MACS[0], flags=0x8000,
                                       options=[(53, b"\x01"), *pxe_options(0)]),
    "pxe-uefi-request": request_bytes(mac=MACS[1], options=[(53, b"\x03"), (54, SERVER_ID),
                                      (50, ip("10.54.0.101")), *pxe_options(7)]),
    "ipxe-relayed-request": request_bytes(mac=MACS[2], giaddr="10.1.0.1", options=[
        (53, b"\x03"), (54, SERVER_ID), (50, ip("10.54.0.102")), (77, b"iPXE"), *pxe_options(7),
        (61, b"\x01" + bytes.fromhex("525400000003")), (82, b"\x01\x06eth0/1\x02\x04\xde\xad\xbe\xef")]),
    "uefi-http-discover": request_bytes(mac=MACS[3], options=[
        (53, b"\x01"), (93, b"\x00\x10"), (60, b"HTTPClient:Arch:00016:UNDI:003001")]),
    "udhcpc-renew": request_bytes(mac=MACS[0], ciaddr="10.54.0.100", options=[
        (53, b"\x03"), (61, b"\x01" + bytes.fromhex("525400000001")), (60, b"udhcp 1.35.0")]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(COMMON))
def test_common_requests_take_the_fast_path(name: str) -> None:
    pair = Pair()
    data = COMMON[name]
    assert pair.step(data) is None  # nothing learned yet
    full, _ = full_path(pair.policy, pair.lookup, data)
    assert full is not None and full[0][242] in (2, 5)
    # Another xid and flags: the same template, the request's own fields.
    other = bytearray(data)
    other[4:8] = b"\xca\xfe\xba\xbe"
    for fp in pair.fast:
        assert fp.respond(data) == full
        out = fp.respond(bytes(other))
        assert out is not None and out == full_path(pair.policy, pair.lookup, bytes(other))[0]


class NoRevision:
    """A lookup without ``revision``: the fast path checks the node on every request."""

    def __init__(self, table: NodeTable) -> None:
        self.table = table

    def node_by_mac(self, mac: str) -> Any:
        return self.table.node_by_mac(mac)

    def get(self, kind: str, ref: str) -> Any:
        return self.table.get(kind, ref)

    def node_ip(self, node: Any) -> str:
        return self.table.node_ip(node)


@pytest.mark.parametrize("revision", [True, False], ids=["with-revision", "without-revision"])
def test_a_changed_node_is_never_answered_from_a_stale_template(revision: bool) -> None:
    table = nodes()
    pair = Pair(table if revision else NoRevision(table))
    data = COMMON["pxe-bios-discover"]
    pair.step(data)
    assert all(fp.respond(data) is not None for fp in pair.fast)
    table.add({**validate_new("node", {"index": 0, "mac": [MACS[0]], "ip": "10.54.3.3"}, 0.0),
               "name": "n0"})  # fmt: skip
    for fp in pair.fast:
        assert fp.respond(data) is None  # the node document changed: the template is dropped
    out = pair.step(data)
    assert out is None
    for fp in pair.fast:
        answer = fp.respond(data)
        assert answer is not None and answer[0][16:20] == ip("10.54.3.3")


def test_the_fast_path_follows_the_object_cache(tmp_path: Path) -> None:
    """Node IP and pool network changes under the real ObjectCache (store revision)."""
    from cwboot.control.cache import ObjectCache
    from cwboot.control.repo import Objects
    from cwboot.control.store.embedded import EmbeddedStore

    mac = MACS[0]
    data = COMMON["pxe-bios-discover"]

    async def main() -> None:
        store = EmbeddedStore(tmp_path / "store.sqlite3")
        objs = Objects(store)
        cache = ObjectCache(store)
        try:
            await objs.create("naming_pool", {"name": "default", "network": "10.54.0.0/16",
                                              "ip_offset": 100})  # fmt: skip
            await objs.create("node", {"index": 1, "mac": [mac]})
            async with trio.open_nursery() as nursery:
                await nursery.start(cache.run)
                pair = Pair(cache)

                def answer() -> bytes:
                    pair.step(data)
                    outs = [fp.respond(data) for fp in pair.fast]
                    assert outs[0] is not None and outs[0] == outs[1]
                    return outs[0][0][16:20]

                assert answer() == ip("10.54.0.101")
                await objs.update("node", "n1", {"ip": "10.54.7.7"})
                await cache.sync()
                assert answer() == ip("10.54.7.7")
                await objs.update("node", "n1", {"ip": ""})
                await objs.update("naming_pool", "default", {"network": "10.55.0.0/16"})
                await cache.sync()
                assert answer() == ip("10.55.0.101")
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()

    trio.run(main)


# -- golden captures through the fast path


# every golden capture but the proxy ones (the fast path declines proxy mode), through both backends
golden_cases = pytest.mark.parametrize(
    ("capture", "variant"),
    [c for c in CASES if c[1] != "proxy"],
    ids=[f"{p.stem}-{v}" if v else p.stem for p, v in CASES if v != "proxy"],
)
both_fast_backends = pytest.mark.parametrize("backend", BACKENDS, ids=["c-fast", "py-fast"])


def golden_setup(
    capture: Path, variant: str, backend: ModuleType
) -> tuple[bytes, Any, NodeTable, BootPolicy, FastPath]:
    """A capture, its parsed request, a node table that knows it (unless the NAK variant), the policy
    and a fast path on ``backend``."""
    data = capture.read_bytes()
    request = _wire_py.parse_untrusted(data)
    lookup = table(request, seeded=variant != "nak")
    policy = BootPolicy(head_address="10.99.0.1", http_port=8081, router="10.99.0.1")
    return data, request, lookup, policy, FastPath(policy, lookup, backend=backend)


@golden_cases
@both_fast_backends
def test_golden_capture_through_the_fast_path(capture: Path, variant: str, backend: ModuleType) -> None:
    data, request, lookup, policy, fast = golden_setup(capture, variant, backend)
    assert fast.respond(data) is None
    full, _ = full_path(policy, lookup, data)
    assert full is not None
    fast.learn(backend.parse_untrusted(data))
    out = fast.respond(data)
    expected = capture.with_name(f"{capture.stem}-{variant}.txt" if variant else f"{capture.stem}.txt")
    if variant == "nak" or "# warnings" in expected.read_text():
        assert out is None  # NAKs and replies with a warning take the full path
        return
    assert out == full
    reply_text = expected.read_text().split("# reply\n", 1)[1]
    assert render(_wire_py.parse_untrusted(out[0])) + "\n" == reply_text


# -- warmed templates (FastPath.warm: compiled before a node's first request)

# The client classes the generated requests use (raw 77, 60, 93), mostly well-formed.
classes = st.tuples(profiles.map(lambda p: p[1]), profiles.map(lambda p: p[2]),
                    profiles.map(lambda p: p[3]))  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(classes, max_size=4), sequences())
def test_warmed_fast_path_equals_full_path(warm: list[Any], batch: list[bytes]) -> None:
    """Warmed for every MAC (known or not) and some classes before any request: every fast
    answer is still the full path's, and the backends agree."""
    pair = Pair()
    for fp in pair.fast:
        fp.warm((mac, cls) for cls in [*fp.classes, *warm] for mac in MACS + UNKNOWN)
    assert len(pair.fast[0].responder.entries) == len(pair.fast[1].responder.entries)
    for data in batch:
        pair.step(data)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(classes, min_size=1, max_size=3), sequences())
def test_warmed_fast_path_follows_node_table_changes(warm: list[Any], after: list[bytes]) -> None:
    pair = Pair()
    for fp in pair.fast:
        fp.warm((mac, cls) for cls in warm for mac in MACS)
    assert isinstance(pair.lookup, NodeTable)
    pair.lookup.add({**validate_new("node", {"index": 0, "mac": [MACS[0]], "ip": "10.54.3.3"}, 0.0),
                     "name": "n0"})  # fmt: skip
    for data in after:
        pair.step(data)


def class_of(data: bytes) -> Any:
    """The client class (raw 77, 60, 93) a request carries."""
    options = _wire_py.parse_untrusted(data).options
    return options.get(77), options.get(60), options.get(93)


@pytest.mark.parametrize("name", list(COMMON))
def test_warmed_common_requests_take_the_fast_path_at_once(name: str) -> None:
    pair = Pair()
    data = COMMON[name]
    for fp in pair.fast:
        assert fp.warm((mac, class_of(data)) for mac in MACS) == len(MACS)
        assert fp.warm((mac, class_of(data)) for mac in MACS) == 0  # already there
    full, _ = full_path(pair.policy, pair.lookup, data)
    for fp in pair.fast:
        assert fp.respond(data) == full  # the first request of this node and class


@pytest.mark.parametrize("backend", BACKENDS, ids=["c-fast", "py-fast"])
def test_learned_classes_are_warmed_and_bounded(backend: ModuleType) -> None:
    """A class compiled once (its first node) joins ``classes``; the default is the plain one."""
    pair = Pair()
    fp = FastPath(pair.policy, pair.lookup, backend=backend)
    assert list(fp.classes) == [(None, None, None)]
    data = COMMON["pxe-bios-discover"]
    full_path(pair.policy, pair.lookup, data)  # the full path answers, then learn
    fp.learn(backend.parse_untrusted(data))
    assert list(fp.classes) == [(None, None, None), class_of(data)]
    assert fp.classes_version == 1
    # Another node of the class: answered at once once warmed.
    other = request_bytes(mac=MACS[1], flags=0x8000, options=[(53, b"\x01"), *pxe_options(0)])
    assert fp.respond(other) is None
    fp.warm((mac, cls) for cls in fp.classes for mac in MACS)
    assert fp.respond(other) == full_path(pair.policy, pair.lookup, other)[0]
    for i in range(20):  # at most MAX_LEARNED_CLASSES more
        data = request_bytes(mac=MACS[0], options=[
            (53, b"\x01"), (60, b"PXEClient:Arch:00000:UNDI:0020%02d" % i), (93, b"\x00\x00")])  # fmt: skip
        full_path(pair.policy, pair.lookup, data)
        fp.learn(backend.parse_untrusted(data))
    assert len(fp.classes) == 1 + 8


@pytest.mark.parametrize("backend", BACKENDS, ids=["c-fast", "py-fast"])
def test_warming_stops_at_half_the_table(backend: ModuleType) -> None:
    pair = Pair()
    fp = FastPath(pair.policy, pair.lookup, backend=backend)
    fp.responder.max_entries = 6
    plain = (None, None, None)
    compiled = fp.warm((mac, cls) for cls in [plain, class_of(COMMON["pxe-bios-discover"])] for mac in MACS)
    assert compiled == 3 and len(fp.responder.entries) == 3


@golden_cases
@both_fast_backends
def test_golden_capture_through_the_warmed_fast_path(capture: Path, variant: str, backend: ModuleType) -> None:
    """Warmed with the capture's class before it arrives: the same bytes as the full path at once."""
    data, request, lookup, policy, fast = golden_setup(capture, variant, backend)
    fast.warm([(request.mac, class_of(data))])
    out = fast.respond(data)
    full, _ = full_path(policy, lookup, data)
    expected = capture.with_name(f"{capture.stem}-{variant}.txt" if variant else f"{capture.stem}.txt")
    if variant == "nak" or "# warnings" in expected.read_text():
        assert out is None
        return
    assert out == full
