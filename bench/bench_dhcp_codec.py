"""DHCP codec micro-benchmark: Cython vs pure Python, per packet, two algorithms.

    .venv/bin/python bench/bench_dhcp_codec.py [--quick]

Both backends are loaded side by side (``_wire_c`` and ``_wire_py``) and run
the same packets through the same boot policy (cwboot.policy.dhcp) and node
table, so the ratio is measured in one run on one machine. Figures are the
best of several repeats (the machine is shared; the minimum is the least noisy
estimate of the cost). Packets: a PXE BIOS DISCOVER, a relayed iPXE REQUEST
with options 61 and 82, a perfdhcp DISCOVER, a udhcpc DISCOVER, an iPXE UEFI
DISCOVER (captured ones from tests/protocol/golden when present).

Two algorithms, each in both backends:

- ``respond`` (what the service runs first): FastResponder.respond, one call
  from datagram to (reply, destination) using the template the policy compiled
  for that node and request class (cwboot.policy.dhcp.FastPath); the Python
  backend runs the same algorithm in Python.
- ``parse+decide+build`` (the full path, taken on a decline, and the only path
  before the fast path existed): parse_untrusted -> BootPolicy.decide (pure
  Python, shared) -> build_reply, plus the stages alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cwboot.control.objects import validate_new  # noqa: E402
from cwboot.policy.dhcp import BootPolicy, FastPath, NodeLookup, Reply  # noqa: E402
from cwboot.policy.node_table import NodeTable  # noqa: E402
from cwboot.protocol.dhcp import _wire_c, _wire_py  # noqa: E402
from tests.protocol.dhcp_helpers import pxe_options, request_bytes  # noqa: E402

GOLDEN = ROOT / "tests" / "protocol" / "golden"


def packets() -> list[tuple[str, bytes]]:
    out = [
        (
            "pxe-bios-discover",
            request_bytes(mac="52:54:00:00:00:01", options=[(53, b"\x01"), *pxe_options(0)]),
        ),
        (
            "ipxe-relayed-request",
            request_bytes(
                mac="52:54:00:00:00:02",
                giaddr="10.1.0.1",
                options=[
                    (53, b"\x03"),
                    (54, bytes((10, 54, 0, 1))),
                    (50, bytes((10, 54, 0, 102))),  # index 2 in lookup_for: an ACK
                    (77, b"iPXE"),
                    *pxe_options(7),
                    (61, b"\x01\x52\x54\x00\x00\x00\x02"),
                    (82, b"\x01\x06eth0/1\x02\x04\xde\xad\xbe\xef"),
                ],
            ),  # fmt: skip
        ),
    ]
    for name in ("perfdhcp-discover", "udhcpc-discover", "ipxe-uefi-0"):
        path = GOLDEN / f"{name}.bin"
        if path.exists():
            out.append((name, path.read_bytes()))
    return out


def lookup_for(data: list[bytes]) -> NodeLookup:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.54.0.0/16", "ip_offset": 100}, 0.0
    )
    # Each MAC at the index whose address its REQUEST asks for (so it gets an ACK, not a NAK).
    index: dict[str, int] = {}
    for d in data:
        req = _wire_py.parse_untrusted(d)
        asked = req.options.get(50) or req.ciaddr
        if asked != bytes(4):
            index[req.mac] = asked[3] - 100
    free = (i for i in range(10, 1000) if i not in index.values())
    for d in data:
        index.setdefault(_wire_py.parse_untrusted(d).mac, next(free))
    docs = [
        {**validate_new("node", {"index": i, "mac": [m]}, 0.0), "name": f"n{i}"}
        for m, i in sorted(index.items())
    ]
    return NodeTable(docs, [pool])


def pipeline(codec: ModuleType, policy: BootPolicy, lookup: NodeLookup) -> Callable[[bytes], bytes]:
    parse, build, decide = codec.parse_untrusted, codec.build_reply, policy.decide

    def respond(data: bytes) -> bytes:
        request = parse(data)
        d = decide(request, lookup)
        assert type(d) is Reply
        return build(
            request, d.message_type, d.ciaddr, d.yiaddr, d.siaddr, d.sname, d.file, d.options
        )  # type: ignore[no-any-return]

    return respond


def fast_path(
    codec: ModuleType, policy: BootPolicy, lookup: NodeLookup, data: list[bytes]
) -> Callable[[bytes], tuple[bytes, tuple[str, int]] | None]:
    """``codec``'s FastResponder.respond with the templates for ``data`` compiled (as the
    service does after the full path answered each once)."""
    fast = FastPath(policy, lookup, backend=codec)
    for d in data:
        request = codec.parse_untrusted(d)
        assert type(policy.decide(request, lookup)) is Reply
        fast.learn(request)
    return fast.respond


def per_call_us(fn: Callable[[bytes], object], data: bytes, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(data)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    quick = "--quick" in sys.argv
    n, repeats = (2000, 3) if quick else (20000, 7)
    pkts = packets()
    lookup = lookup_for([d for _, d in pkts])
    policy = BootPolicy(
        head_address="10.54.0.1", http_port=8081, router="10.54.0.254", dns_servers=["10.54.0.2"]
    )
    c_full, py_full = pipeline(_wire_c, policy, lookup), pipeline(_wire_py, policy, lookup)
    c_fast = fast_path(_wire_c, policy, lookup, [d for _, d in pkts])
    py_fast = fast_path(_wire_py, policy, lookup, [d for _, d in pkts])
    print(f"{'packet':24s} {'stage':22s} {'cython us':>10s} {'python us':>10s} {'ratio':>7s}")
    ratios = []
    fast_ratios = []
    for name, data in pkts:
        assert c_full(data) == py_full(data)
        answer = c_fast(data)
        assert answer is not None and answer == py_fast(data) and answer[0] == c_full(data)
        req = _wire_c.parse_untrusted(data)
        d = policy.decide(req, lookup)
        assert isinstance(d, Reply)
        args = (req, d.message_type, d.ciaddr, d.yiaddr, d.siaddr, d.sname, d.file, d.options)
        stages: list[tuple[str, Callable[[bytes], object], Callable[[bytes], object]]] = [
            ("parse", _wire_c.parse_untrusted, _wire_py.parse_untrusted),
            (
                "build",
                lambda _, a=args: _wire_c.build_reply(*a),
                lambda _, a=args: _wire_py.build_reply(*a),
            ),
            (
                "decide (same policy)",
                lambda _, r=req: policy.decide(r, lookup),
                lambda _, r=req: policy.decide(r, lookup),
            ),
            ("parse+decide+build", c_full, py_full),
            ("respond (fast path)", c_fast, py_fast),
        ]
        for stage, cf, pf in stages:
            c_us = per_call_us(cf, data, n, repeats)
            p_us = per_call_us(pf, data, n, repeats)
            print(f"{name:24s} {stage:22s} {c_us:10.2f} {p_us:10.2f} {p_us / c_us:6.1f}x")
            if stage == "parse+decide+build":
                ratios.append((c_us, p_us))
            elif stage.startswith("respond"):
                fast_ratios.append((c_us, p_us))
    for label, rs in (("respond (fast path)", fast_ratios), ("parse+decide+build (full path)", ratios)):
        c_mean = sum(c for c, _ in rs) / len(rs)
        p_mean = sum(p for _, p in rs) / len(rs)
        print(
            f"mean {label}: cython {c_mean:.2f} us/packet, python {p_mean:.2f} us/packet,"
            f" ratio {p_mean / c_mean:.1f}x"
        )
    c_resp = sum(c for c, _ in fast_ratios) / len(fast_ratios)
    c_old = sum(c for c, _ in ratios) / len(ratios)
    print(f"cython respond vs cython parse+decide+build: {c_old / c_resp:.1f}x faster")


if __name__ == "__main__":
    main()
