"""The DHCP codec micro-benchmark under pytest-benchmark: respond (fast path) and parse + decide + build.

    .venv/bin/python -m pytest bench/test_bench_dhcp_codec.py --benchmark-enable \
        --benchmark-group-by=param:packet --benchmark-columns=min,median,ops

The same packets, policy and node table as bench/bench_dhcp_codec.py (which
prints the per-stage table and the ratios); here pytest-benchmark times, for
each backend, the one-call respond path (``test_respond``: FastResponder with
the policy's compiled templates) and the full pipeline
(``test_parse_decide_build``: what every packet cost before the fast path, and
what a declined one still costs), so its grouped table shows the Cython and
the Python backend side by side per packet, in one run. Without
``--benchmark-enable`` (the project's default options disable benchmarks) each
case runs once, which checks that both backends still give the same reply.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dhcp_codec import fast_path, lookup_for, packets, pipeline  # noqa: E402

from cwboot.policy.dhcp import BootPolicy  # noqa: E402
from cwboot.protocol.dhcp import _wire_c, _wire_py  # noqa: E402

PACKETS = packets()
LOOKUP = lookup_for([data for _, data in PACKETS])
POLICY = BootPolicy(
    head_address="10.54.0.1", http_port=8081, router="10.54.0.254", dns_servers=["10.54.0.2"]
)
BACKENDS = {"cython": _wire_c, "python": _wire_py}


@pytest.mark.parametrize("packet", [name for name, _ in PACKETS])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_parse_decide_build(benchmark: pytest.FixtureRequest, backend: str, packet: str) -> None:
    data = dict(PACKETS)[packet]
    respond = pipeline(BACKENDS[backend], POLICY, LOOKUP)
    reference = pipeline(_wire_py, POLICY, LOOKUP)(data)
    assert benchmark(respond, data) == reference  # type: ignore[operator]


@pytest.mark.parametrize("packet", [name for name, _ in PACKETS])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_respond(benchmark: pytest.FixtureRequest, backend: str, packet: str) -> None:
    data = dict(PACKETS)[packet]
    respond = fast_path(BACKENDS[backend], POLICY, LOOKUP, [d for _, d in PACKETS])
    answer = benchmark(respond, data)  # type: ignore[operator]
    assert answer is not None and answer[0] == pipeline(_wire_py, POLICY, LOOKUP)(data)
