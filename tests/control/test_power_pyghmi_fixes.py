"""pyghmi's shared I/O thread stalls concurrent callers; cwboot.control.power.pyghmi_fixes cures it.

One IPMI worker process, 16 threads, 256 BMCs, one status operation each (a
login, one command, a logout), 16 at a time. Against a local simulator every
operation takes a few milliseconds; a stall is an operation that took 0.4 s or
more (pyghmi's retry timer is 0.5-1 s). Without the work-arounds stalls happen
(seen: 0-13 per round of 256); with them, none (slowest: 0.07 s).
"""

from __future__ import annotations

import trio

from cwboot.control.power import IpmiDriver, PowerRequest, PowerTarget
from cwboot.sim.bmc import make_bmcs, serve_bmcs

STALL = 0.4
BMCS = 256
CONCURRENCY = 16


def durations(with_fixes: bool) -> list[tuple[float, bool]]:
    """(seconds, ok) of one status operation on each of BMCS simulated BMCs."""
    out: list[tuple[float, bool]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            farm = await nursery.start(serve_bmcs, make_bmcs(BMCS))
            driver = await nursery.start(IpmiDriver(1, CONCURRENCY, pyghmi_fixes=with_fixes).serve)
            limiter = trio.CapacityLimiter(CONCURRENCY)
            # Once, so the worker's start-up (imports) is not counted as a stall.
            await driver.attempt(
                PowerTarget("warm", "ipmi", "127.0.0.1", farm.ports[-1], "admin", "password"),
                PowerRequest("status"),
            )

            async def one(port: int) -> None:
                async with limiter:
                    t0 = trio.current_time()
                    attempt = await driver.attempt(
                        PowerTarget(f"n{port}", "ipmi", "127.0.0.1", port, "admin", "password"),
                        PowerRequest("status"),
                    )
                    out.append((trio.current_time() - t0, attempt.ok))

            with trio.fail_after(60):
                async with trio.open_nursery() as ops:
                    for port in farm.ports:
                        ops.start_soon(one, port)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return out


def test_without_fixes_pyghmi_stalls_concurrent_callers() -> None:
    # The flaw is a race (seen in about two rounds out of three): look for it in up to eight.
    for _ in range(8):
        stalls = [t for t, _ in durations(with_fixes=False) if t >= STALL]
        if stalls:
            break
    assert stalls, "no stall seen without the work-arounds: has pyghmi fixed its I/O thread?"


def test_with_fixes_no_caller_stalls() -> None:
    for _ in range(2):
        results = durations(with_fixes=True)
        assert len(results) == BMCS and all(ok for _, ok in results)
        slowest = max(t for t, _ in results)
        assert slowest < STALL, f"an operation took {slowest:.2f} s"
