"""Whatever goes wrong inside an operation, the BMC's session is closed and the result is honest.

- A fault inside the IPMI worker (an exception after login, or inside pyghmi's
  ``Session(...)`` once the BMC accepted the login, as pyghmi's drain race did
  in a 1,000-node power-on) fails that node with "internal error in the IPMI
  worker", writes the full traceback to the worker's stderr (the head's log)
  and still logs out: the simulated BMC counts the session closed.
- A node past its timeout says whether its command had gone out: a slow BMC
  that acts at once but answers late is reported as "no answer ... after the
  power on command was sent ... the BMC may have acted" (``command_sent``);
  one still logging in at the deadline as "before the ... command was sent",
  and its BMC is then never asked to act.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import trio

from cwboot.config import PowerConfig
from cwboot.control.power import (
    IpmiDriver,
    PowerRequest,
    PowerResult,
    PowerService,
    PowerTarget,
)
from cwboot.sim.bmc import BmcFarm, BmcOptions, SimulatedBmc, make_bmcs, serve_bmcs
from tests.control.test_power_service import run_with

FAULT_WORKER = Path(__file__).with_name("ipmi_fault_worker.py")


async def wait_closed(bmc: SimulatedBmc, timeout: float = 10.0) -> None:
    """Until ``bmc`` has no session open (a logout is a datagram: give it time to land)."""
    with trio.move_on_after(timeout):
        while bmc.stats.active or bmc.stats.sessions_closed < bmc.stats.sessions_opened:
            await trio.sleep(0.02)


@pytest.mark.parametrize("mode", ["after-login", "in-login"])
@pytest.mark.parametrize("op", ["on", "status"])
def test_a_fault_in_the_worker_is_logged_and_the_session_closed(
    mode: str, op: str, capfd: pytest.CaptureFixture[str]
) -> None:
    bmc = SimulatedBmc("b0")
    outcomes = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            farm = await nursery.start(serve_bmcs, [bmc])
            driver = await nursery.start(
                IpmiDriver(1, 2, command=[sys.executable, str(FAULT_WORKER), mode]).serve
            )
            target = PowerTarget("n0", "ipmi", "127.0.0.1", farm.ports[0], "admin", "password")
            with trio.fail_after(30):
                outcomes.append(await driver.attempt(target, PowerRequest(op)))
                await wait_closed(bmc)
            nursery.cancel_scope.cancel()

    trio.run(main)
    (outcome,) = outcomes
    assert (outcome.ok, outcome.error) == (False, "internal error in the IPMI worker: IndexError")
    # The BMC accepted one login and saw it closed: no session leaked.
    assert (bmc.stats.sessions_opened, bmc.stats.sessions_closed, bmc.stats.active) == (1, 1, 0)
    assert not bmc.power_on and bmc.history == []
    err = capfd.readouterr().err
    assert "IPMI worker: internal error while running" in err and "Traceback" in err, err
    assert "IndexError: " in err and "injected" in err, err


def run_power_on(bmcs: list[SimulatedBmc], timeout: float) -> list[PowerResult]:
    results: list[PowerResult] = []

    async def scenario(farm: BmcFarm, power: PowerService) -> None:
        results.extend(await power.run([f"n{i}" for i in range(len(bmcs))], PowerRequest("on")))
        # The workers finish what they run; then every session must be closed.
        for bmc in bmcs:
            await wait_closed(bmc, 20)

    run_with(bmcs, PowerConfig(workers=4, max_concurrent=4, timeout=timeout), scenario)
    return sorted(results, key=lambda r: r.node)


def answer_late_from_now_on(bmc: SimulatedBmc, action: str) -> None:
    """Simulator hook, run as the BMC acts: this answer and every later one come 3 s late."""
    bmc.options = dataclasses.replace(bmc.options, delay=3.0)


def test_a_slow_bmc_that_acts_but_answers_late_is_reported_as_maybe_done() -> None:
    # Logs in at once, powers on at once, answers the power-on 3 s later: past the deadline.
    late = SimulatedBmc("late", hook=answer_late_from_now_on)
    # Each reply 0.45 s late (under pyghmi's 0.5 s retry timer): logging in (5 exchanges)
    # takes 2.25 s, so the deadline falls while it is still logging in.
    slower = SimulatedBmc("slower", BmcOptions(delay=0.45))
    quick = make_bmcs(1)[0]
    late_result, slower_result, quick_result = run_power_on([late, slower, quick], timeout=1.0)

    assert late.power_on and late.history == ["on"]
    assert not late_result.ok and late_result.command_sent, late_result
    assert late_result.error.startswith(
        "no answer in 1 s after the power on command was sent to BMC 127.0.0.1:"
    ) and late_result.error.endswith(": the BMC may have acted"), late_result
    assert late_result.to_json()["command_sent"] is True

    assert not slower_result.ok and not slower_result.command_sent, slower_result
    assert slower_result.error.startswith(
        "timed out after 1 s while logging in, before the power on command was sent to BMC"
    ), slower_result
    assert "command_sent" not in slower_result.to_json()
    # Reported as not sent, and indeed never sent: the worker sends no command past the deadline.
    assert slower.stats.sessions_opened == 1 and not slower.power_on and slower.history == []

    assert quick_result.ok and quick_result.state == "on" and quick.power_on
    for bmc in (late, slower, quick):
        assert bmc.stats.active == 0, (bmc.name, bmc.stats)
