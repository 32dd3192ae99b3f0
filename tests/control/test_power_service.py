"""The power service end to end: PowerService -> IPMI worker processes (pyghmi) -> simulated BMCs."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from cwboot.config import ConfigError, PowerConfig, from_dict
from cwboot.control.power import (
    Attempt,
    IpmiDriver,
    PowerRequest,
    PowerResult,
    PowerService,
    PowerTarget,
    serve_power,
)
from cwboot.control.power.ipmi import BadReply, parse_reply_untrusted
from cwboot.sim.bmc import BmcFarm, BmcOptions, SimulatedBmc, make_bmcs, serve_bmcs

Scenario = Callable[[BmcFarm, PowerService], Awaitable[None]]


def run_with(
    bmcs: list[SimulatedBmc], config: PowerConfig, scenario: Scenario, password: str = "password"
) -> None:
    """Serve ``bmcs``, nodes n0.. pointing at them, a power service; run ``scenario``; stop all."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            farm = await nursery.start(serve_bmcs, bmcs)
            nodes = {
                f"n{i}": {
                    "name": f"n{i}",
                    "power_uri": f"ipmi://admin@127.0.0.1:{port}",
                    "power_password": password,
                }
                for i, port in enumerate(farm.ports)
            }
            service = await nursery.start(serve_power, config, nodes.get)
            with trio.fail_after(60):
                await scenario(farm, service)
            nursery.cancel_scope.cancel()

    trio.run(main)


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def by_node(results: list[PowerResult]) -> dict[str, PowerResult]:
    return {r.node: r for r in results}


def test_every_operation() -> None:
    bmcs = make_bmcs(3)

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        async def do(request: PowerRequest) -> dict[str, PowerResult]:
            results = by_node(await power.run(names(3), request))
            assert all(r.ok for r in results.values()), results
            return results

        assert {r.state for r in (await do(PowerRequest("status"))).values()} == {"off"}
        on = await do(PowerRequest("on", bootdev="pxe"))
        assert {(r.state, r.bootdev) for r in on.values()} == {("on", "pxe")}
        assert all(
            b.power_on and b.last_boot_device == "pxe" and b.boot_device == "none" for b in bmcs
        )
        assert {r.state for r in (await do(PowerRequest("status"))).values()} == {"on"}
        await do(PowerRequest("bootdev", bootdev="disk", persistent=True))
        assert all((b.boot_device, b.boot_persistent) == ("disk", True) for b in bmcs)
        await do(PowerRequest("cycle"))
        await do(PowerRequest("reset"))
        assert {r.state for r in (await do(PowerRequest("soft"))).values()} == {"off"}
        # cycle and reset of a node that is off boot it (the BMC refuses them as such).
        await do(PowerRequest("cycle"))
        await do(PowerRequest("off"))
        await do(PowerRequest("reset"))
        await do(PowerRequest("off"))
        assert all(not b.power_on for b in bmcs)
        assert bmcs[0].history == ["on", "cycle", "reset", "soft", "on", "off", "on", "off"]
        assert bmcs[0].last_boot_device == "disk"  # persistent boot device kept

    run_with(bmcs, PowerConfig(workers=4, max_concurrent=4), scenario)
    for b in bmcs:
        assert b.stats.sessions_opened == 11
        assert b.stats.peak_active == 1


def test_silent_slow_and_wrong_password_fail_alone() -> None:
    healthy = make_bmcs(6)
    silent = SimulatedBmc("silent", BmcOptions(silent=True))
    slow = SimulatedBmc("slow", BmcOptions(delay=0.1))
    other_password = SimulatedBmc("pw", BmcOptions(password="another"))
    bmcs = [*healthy, silent, slow, other_password]

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        start = trio.current_time()
        arrived: list[tuple[float, PowerResult]] = []
        async with power.submit(names(len(bmcs)), PowerRequest("on", bootdev="pxe")) as results:
            async for result in results:
                arrived.append((trio.current_time() - start, result))
        got = {r.node: (t, r) for t, r in arrived}
        for i in range(6):
            t, r = got[f"n{i}"]
            assert r.ok and r.state == "on" and t < 1.5, (t, r)
        t, r = got["n6"]
        assert not r.ok and r.error.startswith("timed out after 2 s") and 1.9 < t < 3.0, (t, r)
        t, r = got["n7"]
        assert r.ok and r.state == "on", r
        t, r = got["n8"]
        assert (
            not r.ok and r.error == "login refused: wrong user name or password" and r.attempts == 1
        ), r
        # The healthy ones came back first, as they completed; the silent one last.
        assert arrived[-1][1].node == "n6"

    run_with(bmcs, PowerConfig(workers=8, max_concurrent=16, timeout=2.0), scenario)
    assert all(b.power_on for b in healthy) and slow.power_on
    assert not silent.power_on and not other_password.power_on


def test_budget_one_operation_per_bmc_and_cluster_cap() -> None:
    bmcs = make_bmcs(12, BmcOptions(delay=0.02))
    sampled_peak = 0

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        nonlocal sampled_peak

        async def sample() -> None:
            nonlocal sampled_peak
            while True:
                sampled_peak = max(sampled_peak, sum(b.stats.active for b in bmcs))
                await trio.sleep(0.002)

        collected: list[PowerResult] = []

        async def one_request(request: PowerRequest) -> None:
            # Every node twice in one request, and three requests at once.
            collected.extend(await power.run(names(12) * 2, request))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            async with trio.open_nursery() as requests:
                for request in (
                    PowerRequest("status"),
                    PowerRequest("on"),
                    PowerRequest("bootdev", bootdev="pxe"),
                ):
                    requests.start_soon(one_request, request)
            nursery.cancel_scope.cancel()
        assert len(collected) == 72 and all(r.ok for r in collected)
        assert power.stats.peak_per_bmc == 1
        assert power.stats.peak_in_flight == 3

    run_with(bmcs, PowerConfig(workers=2, max_concurrent=3), scenario)
    assert max(b.stats.peak_active for b in bmcs) == 1
    assert 1 <= sampled_peak <= 3
    assert sum(b.stats.sessions_opened for b in bmcs) == 72
    assert sum(b.stats.sessions_closed for b in bmcs) == 72


def test_busy_bmc_is_retried_with_a_fresh_session() -> None:
    bmcs = [
        SimulatedBmc("busy", BmcOptions(refuse_sessions=2)),
        SimulatedBmc("busy2", BmcOptions(refuse_sessions=2)),
    ]

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        (result,) = await power.run(["n0"], PowerRequest("on"))
        assert result.ok and result.attempts == 2, result
        assert power.stats.retries == 1

    run_with(bmcs, PowerConfig(workers=2, max_concurrent=2, retries=2), scenario)

    async def no_retries(farm: BmcFarm, power: PowerService) -> None:
        (result,) = await power.run(["n1"], PowerRequest("on"))
        assert not result.ok and result.error == "login refused: the BMC has no free session", (
            result
        )
        assert result.attempts == 1

    run_with(bmcs, PowerConfig(workers=2, max_concurrent=2, retries=0), no_retries)


def test_power_on_is_shaped_into_waves() -> None:
    started: list[float] = []
    bmcs = make_bmcs(8, hook=lambda bmc, action: started.append(trio.current_time()))

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        t0 = trio.current_time()
        await power.run(names(8), PowerRequest("status"))
        assert trio.current_time() - t0 < 1.0  # status is not shaped
        results = await power.run(names(8), PowerRequest("on"))
        assert all(r.ok for r in results)

    run_with(bmcs, PowerConfig(workers=8, max_concurrent=8, wave_rate=10.0), scenario)
    started.sort()
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    assert len(started) == 8
    assert min(gaps) > 0.07, gaps  # 10 per second, give or take scheduling
    assert started[-1] - started[0] > 0.65


def test_unknown_nodes_and_bad_power_settings_are_per_node_errors() -> None:
    bmcs = make_bmcs(1)

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        power.lookup = {
            "n0": {
                "name": "n0",
                "power_uri": f"ipmi://admin@127.0.0.1:{farm.ports[0]}",
                "power_password": "password",
            },
            "bare": {"name": "bare"},
            "redfish": {"name": "redfish", "power_uri": "redfish://admin@127.0.0.1:443"},
        }.get
        results = by_node(
            await power.run(["n0", "bare", "redfish", "ghost"], PowerRequest("status"))
        )
        assert results["n0"].ok
        assert results["bare"].error == "node bare has no power_uri"
        assert "scheme 'redfish' is not supported" in results["redfish"].error
        assert results["ghost"].error == "no node named 'ghost'"

    run_with(bmcs, PowerConfig(workers=1, max_concurrent=1), scenario)


def test_password_is_never_logged_or_returned(caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-Secret"
    bmcs = [
        SimulatedBmc("ok", BmcOptions(password=secret)),
        SimulatedBmc("other", BmcOptions(password="x")),
    ]
    seen: list[dict[str, Any]] = []

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        for request in (PowerRequest("status"), PowerRequest("on", bootdev="pxe")):
            for result in await power.run(names(2), request):
                seen.append(result.to_json())
        targets, _ = power.resolve(["n0"])
        assert secret not in repr(targets)

    with caplog.at_level(logging.DEBUG):
        run_with(bmcs, PowerConfig(workers=2, max_concurrent=2), scenario, password=secret)
    assert [r["ok"] for r in seen[:2]].count(True) == 1
    assert secret not in json.dumps(seen)
    assert secret not in caplog.text


def test_head_with_thousands_of_descriptors_still_powers_nodes() -> None:
    """pyghmi's select() breaks on fds >= 1024; it runs in worker processes that have few."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) >= 1024

        async def scenario(farm: BmcFarm, power: PowerService) -> None:
            results = await power.run(names(4), PowerRequest("on"))
            assert all(r.ok for r in results), results

        run_with(make_bmcs(4), PowerConfig(workers=2, max_concurrent=4), scenario)
    finally:
        for fd in held:
            os.close(fd)


def _driver_scenario(hung_after: float, sabotage: int) -> tuple[list[str], int]:
    """Start a driver, send ``sabotage`` (a signal) to its worker, then run operations."""
    errors: list[str] = []
    restarts = 0

    async def main() -> None:
        nonlocal restarts
        async with trio.open_nursery() as nursery:
            farm = await nursery.start(serve_bmcs, make_bmcs(2))
            driver: IpmiDriver = await nursery.start(IpmiDriver(1, 2, hung_after=hung_after).serve)
            target = PowerTarget("n0", "ipmi", "127.0.0.1", farm.ports[0], "admin", "password")
            assert (await driver.attempt(target, PowerRequest("status"))).ok
            os.kill(driver._workers[0].process.pid, sabotage)
            with trio.fail_after(30):
                first = await driver.attempt(target, PowerRequest("on"))
                errors.append(first.error)
                # Whatever happened to that one, the driver has a working worker again.
                while not (await driver.attempt(target, PowerRequest("status"))).ok:
                    await trio.sleep(0.1)
            restarts = driver.restarts
            nursery.cancel_scope.cancel()

    trio.run(main)
    return errors, restarts


def test_a_killed_worker_is_replaced() -> None:
    errors, restarts = _driver_scenario(hung_after=60.0, sabotage=signal.SIGKILL)
    assert errors[0] in (
        "",
        "IPMI worker died during the operation (killed by signal 9); it was restarted",
        "IPMI worker unavailable",
    )
    assert restarts == 1


def test_a_hung_worker_is_killed_and_replaced() -> None:
    # SIGSTOP: the process is alive but answers nothing, like a worker stuck in pyghmi.
    errors, restarts = _driver_scenario(hung_after=1.0, sabotage=signal.SIGSTOP)
    assert errors == ["IPMI worker gave no reply in 1 s; it was restarted"]
    assert restarts == 1


def test_a_worker_killed_mid_operation_fails_its_nodes_clearly_and_is_replaced() -> None:
    # Slow BMCs (0.3 s per reply): both operations are inside the worker when it dies.
    bmcs = make_bmcs(2, BmcOptions(delay=0.3))
    died = "IPMI worker died during the operation (killed by signal 9); it was restarted"

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        driver = power.drivers["ipmi"]
        assert isinstance(driver, IpmiDriver)
        victim = driver._workers[0].process.pid
        results = power.submit(names(2), PowerRequest("cycle"))
        while not all(b.stats.sessions_opened for b in bmcs):
            await trio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        got = by_node([r async for r in results])
        for result in got.values():
            # Not retried: the BMC may have acted already (a cycle must not run twice).
            assert (result.ok, result.error, result.attempts) == (False, died, 1), result
        assert driver.restarts == 1 and driver._workers[0].process.pid != victim
        again = await power.run(names(2), PowerRequest("status"))
        assert all(r.ok for r in again), again

    run_with(bmcs, PowerConfig(workers=2, max_concurrent=2, timeout=30.0), scenario)


# A worker whose stdout carries junk: before main() straight onto the reply
# channel (as an import-time print would), then inside every operation through
# print() and through fd 1 itself (as pyghmi's print() calls and C code would).
NOISY_WORKER = r"""
import os, sys
sys.stdout.write("chatter at import\n" + "x" * 100000 + "\n[1, 2]\n" + '{"id": 1}\n')
sys.stdout.flush()
from cwboot.control.power import ipmi_worker
real_operation = ipmi_worker.run_operation
def chatty_operation(req, *args):
    print("print() inside an operation")
    sys.stdout.flush()
    os.write(1, b'{"id": 424242, "ok": true}\n')
    return real_operation(req, *args)
ipmi_worker.run_operation = chatty_operation
raise SystemExit(ipmi_worker.main(sys.argv[1:]))
"""


def test_stray_output_of_a_worker_never_disturbs_the_replies() -> None:
    drops: dict[str, int] = {}
    outcomes: list[Attempt] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            farm = await nursery.start(serve_bmcs, make_bmcs(4))
            driver: IpmiDriver = await nursery.start(
                IpmiDriver(1, 4, command=[sys.executable, "-c", NOISY_WORKER]).serve
            )

            async def one(target: PowerTarget, request: PowerRequest) -> None:
                outcomes.append(await driver.attempt(target, request))

            with trio.fail_after(30):
                for request in (PowerRequest("status"), PowerRequest("on"), PowerRequest("status")):
                    async with trio.open_nursery() as ops:
                        for i, port in enumerate(farm.ports):
                            target = PowerTarget(f"n{i}", "ipmi", "127.0.0.1", port, "admin", "password")
                            ops.start_soon(one, target, request)
            drops.update(driver.drops)
            assert driver.restarts == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(outcomes) == 12 and all(a.ok for a in outcomes), outcomes
    assert [a.state for a in outcomes[-4:]] == ["on"] * 4
    # The junk written before main() was read, skipped and counted; nothing written
    # during the 12 operations reached the channel (it would add "not JSON" and
    # "reply to no pending request" drops).
    assert drops == {
        "not JSON": 1,
        "line too long": 1,
        "not a JSON object": 1,
        "no integer id or boolean ok": 1,
    }


def test_reply_parser_parses_or_raises_bad_reply() -> None:
    assert parse_reply_untrusted(b'{"id": 7, "ok": true, "state": "on", "bootdev": "pxe"}') == (
        7,
        Attempt(True, state="on", bootdev="pxe"),
    )
    assert parse_reply_untrusted(b'{"id": 8, "ok": false, "error": "e", "retryable": true}') == (
        8,
        Attempt(False, error="e", retryable=True),
    )
    for junk, reason in (
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"Password for 10.0.0.1 is somehow malformed", "not JSON"),
        (b"null", "not a JSON object"),
        (b'{"id": true, "ok": true}', "no integer id or boolean ok"),
        (b'{"id": 1, "ok": 1}', "no integer id or boolean ok"),
        (b'{"id": 1, "ok": true, "state": 3}', "a field of the wrong type"),
        (b'{"id": 1, "ok": true, "retryable": "no"}', "a field of the wrong type"),
    ):
        with pytest.raises(BadReply, match=reason):
            parse_reply_untrusted(junk)
    good = b'{"id":12,"ok":false,"error":"login refused","retryable":false}'
    rng = random.Random(1)
    for _ in range(5000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parse_reply_untrusted(bytes(data))
        except BadReply:
            pass


def test_config_rejects_out_of_range_power_settings() -> None:
    for key, value in (
        ("workers", 0),
        ("max_concurrent", 0),
        ("timeout", 0.0),
        ("retries", -1),
        ("wave_rate", -1.0),
    ):
        with pytest.raises(ConfigError, match=f"power.{key}"):
            from_dict({"power": {key: value}})


def test_stopping_the_service_still_gives_every_node_a_result() -> None:
    bmcs = [SimulatedBmc("silent", BmcOptions(silent=True)), *make_bmcs(1)]

    async def main() -> list[PowerResult]:
        nodes = {}
        async with trio.open_nursery() as outer:
            farm = await outer.start(serve_bmcs, bmcs)
            for i, port in enumerate(farm.ports):
                nodes[f"n{i}"] = {
                    "name": f"n{i}",
                    "power_uri": f"ipmi://admin@127.0.0.1:{port}",
                    "power_password": "password",
                }
            async with trio.open_nursery() as inner:
                service = await inner.start(
                    serve_power, PowerConfig(workers=2, max_concurrent=2), nodes.get
                )
                results = service.submit(["n0", "n1"], PowerRequest("status"))
                await trio.sleep(1.0)
                inner.cancel_scope.cancel()
            with trio.fail_after(5):
                got = [r async for r in results]
            outer.cancel_scope.cancel()
        return got

    got = by_node(trio.run(main))
    assert got["n1"].ok
    assert got["n0"].error == "power service stopped"
