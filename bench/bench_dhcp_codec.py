"""DHCP codec micro-benchmark: Cython vs pure Python, parse + decide + build per packet.

    .venv/bin/python bench/bench_dhcp_codec.py [--quick]

Both backends are loaded side by side (``_wire_c`` and ``_wire_py``) and run
the same packets through the same boot policy (cwboot.policy.dhcp) and node
table, so the ratio is measured in one run on one machine. Figures are the
best of several repeats (the machine is shared; the minimum is the least noisy
estimate of the cost). Packets: a PXE BIOS DISCOVER, a relayed iPXE REQUEST
with option 82, a perfdhcp DISCOVER, a udhcpc DISCOVER (captured ones from
tests/protocol/golden when present).
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
from cwboot.policy.dhcp import BootPolicy, NodeLookup, Reply  # noqa: E402
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
                    (50, bytes((10, 54, 0, 102))),
                    (77, b"iPXE"),
                    *pxe_options(7),
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
    macs = {_wire_py.parse_untrusted(d).mac for d in data}
    docs = [
        {**validate_new("node", {"index": i, "mac": [m]}, 0.0), "name": f"n{i}"}
        for i, m in enumerate(sorted(macs))
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
    print(f"{'packet':24s} {'stage':22s} {'cython us':>10s} {'python us':>10s} {'ratio':>7s}")
    ratios = []
    for name, data in pkts:
        assert c_full(data) == py_full(data)
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
        ]
        for stage, cf, pf in stages:
            c_us = per_call_us(cf, data, n, repeats)
            p_us = per_call_us(pf, data, n, repeats)
            print(f"{name:24s} {stage:22s} {c_us:10.2f} {p_us:10.2f} {p_us / c_us:6.1f}x")
            if stage == "parse+decide+build":
                ratios.append((c_us, p_us))
    c_mean = sum(c for c, _ in ratios) / len(ratios)
    p_mean = sum(p for _, p in ratios) / len(ratios)
    print(
        f"mean parse+decide+build: cython {c_mean:.2f} us/packet, python {p_mean:.2f} us/packet, ratio {p_mean / c_mean:.1f}x"
    )


if __name__ == "__main__":
    main()
