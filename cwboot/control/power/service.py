"""The power service: bulk operations on many nodes under a BMC budget, results streamed.

The budget (PowerConfig):

- one operation per BMC at a time: a BMC (host:port) is reserved from the
  first packet of an operation until its session is over, across every
  request in flight on this head;
- at most ``max_concurrent`` operations at once on the whole head;
- ``timeout`` seconds per node, counted from the moment its operation starts
  (not while it waits for its turn): past it the node is reported as failed at
  once, saying how far it got (``timeout_error``): still logging in or setting
  the boot device (nothing done yet), or its command already sent, when the
  BMC may have acted (``command_sent``). The BMC stays reserved until the
  driver is really done with it (pyghmi gives up on a silent BMC after ~5 s),
  so nothing piles up on it; what the BMC finally answered is logged;
- up to ``retries`` more attempts after a retryable failure (BMC busy,
  session lost), each a fresh session, while time remains;
- ``wave_rate``: operations that boot nodes (on, cycle, reset) start at most
  that many per second across the head, so a 1,000-node power-on is a ramp,
  not a wall (0 = no shaping).

``submit()`` returns a trio receive channel (an async iterator) that yields
one ``PowerResult`` per node as each completes, in completion order, then ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from cwboot.config import PowerConfig
from cwboot.control.power.driver import Attempt, PowerDriver, Progress
from cwboot.control.power.request import (
    BOOTING_OPS,
    PowerError,
    PowerRequest,
    PowerResult,
    PowerTarget,
    target_for,
)

log = logging.getLogger(__name__)

# Pause before attempt n+1 is RETRY_BACKOFF * n seconds.
RETRY_BACKOFF = 0.2

NodeLookup = Callable[[str], "dict[str, Any] | None"]

# What each operation's command does, for messages ("the power on command").
_COMMAND_NAMES = {"bootdev": "set boot device", "status": "get power state"}


def timeout_error(op: str, timeout: float, bmc: str, progress: Progress) -> str:
    """The error of a node past its timeout: says whether its command had gone out."""
    command = _COMMAND_NAMES.get(op, f"power {op}")
    if progress.command_sent and op != "status":
        return f"no answer in {timeout:g} s after the {command} command was sent to BMC {bmc}: the BMC may have acted"
    if progress.stage == "command":  # status: only a read was asked
        return f"timed out after {timeout:g} s waiting for the power state from BMC {bmc}"
    doing = "setting the boot device" if progress.stage == "bootdev" else "logging in"
    return f"timed out after {timeout:g} s while {doing}, before the {command} command was sent to BMC {bmc}"


@dataclass
class PowerStats:
    """Counters of the budget at work (read by tests and the benchmark)."""

    operations: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # Highest number of operations ever running at once on a single BMC (must stay 1).
    peak_per_bmc: int = 0
    timeouts: int = 0
    # Of those, how many had their command sent already (the BMC may have acted).
    timeouts_after_command: int = 0
    retries: int = 0


class _Waves:
    """Start times spaced 1/rate apart across the whole head."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_start = 0.0

    async def wait_turn(self) -> None:
        if not self.interval:
            return
        now = trio.current_time()
        start = max(now, self.next_start)
        self.next_start = start + self.interval
        await trio.sleep_until(start)


class _Report:
    """Delivers exactly one result for a node, then lets go of the channel."""

    def __init__(self, send: trio.MemorySendChannel[PowerResult]) -> None:
        self.send = send
        self.done = False

    def __call__(self, result: PowerResult) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.send.send_nowait(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller stopped listening
        self.send.close()


class PowerService:
    """Runs power operations; ``serve`` must run in a nursery for ``submit`` to work."""

    def __init__(
        self, config: PowerConfig, drivers: Mapping[str, PowerDriver], lookup: NodeLookup
    ) -> None:
        self.config = config
        self.drivers = dict(drivers)
        self.lookup = lookup
        self.stats = PowerStats()
        self._limiter = trio.CapacityLimiter(max(1, config.max_concurrent))
        self._waves = _Waves(config.wave_rate)
        self._bmc_busy: dict[str, trio.Lock] = {}
        self._bmc_users: dict[str, int] = {}
        self._running_on: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[PowerService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def resolve(self, names: Sequence[str]) -> tuple[list[PowerTarget], list[PowerResult]]:
        """Node names -> their BMC targets, plus an error result for each node that has none."""
        targets, failed = [], []
        for name in names:
            node = self.lookup(name)
            try:
                if node is None:
                    raise PowerError(f"no node named {name!r}")
                target = target_for(node)
                if target.scheme not in self.drivers:
                    raise PowerError(
                        f"power_uri scheme {target.scheme!r} is not supported (expected one of {', '.join(sorted(self.drivers))})"
                    )
            except PowerError as exc:
                failed.append(PowerResult(name, "", False, error=str(exc)))
                continue
            targets.append(target)
        return targets, failed

    def submit(
        self, names: Sequence[str], request: PowerRequest
    ) -> trio.MemoryReceiveChannel[PowerResult]:
        """Start ``request`` on every named node; iterate the returned channel for the results."""
        if self._nursery is None:
            raise RuntimeError("PowerService.serve() is not running")
        targets, failed = self.resolve(names)
        send, receive = trio.open_memory_channel[PowerResult](len(names) or 1)
        for result in failed:
            result.op = request.op
            send.send_nowait(result)
        for target in targets:
            self._nursery.start_soon(self._run_node, target, request, _Report(send.clone()))
        send.close()
        return receive

    async def run(self, names: Sequence[str], request: PowerRequest) -> list[PowerResult]:
        """``submit`` and collect every result (in completion order)."""
        async with self.submit(names, request) as results:
            return [r async for r in results]

    async def _run_node(self, target: PowerTarget, request: PowerRequest, report: _Report) -> None:
        queued = trio.current_time()
        bmc = target.bmc
        lock = self._bmc_busy.setdefault(bmc, trio.Lock())
        self._bmc_users[bmc] = self._bmc_users.get(bmc, 0) + 1
        try:
            async with lock:
                if request.op in BOOTING_OPS:
                    await self._waves.wait_turn()
                async with self._limiter:
                    await self._operate(target, request, report, queued)
        finally:
            self._bmc_users[bmc] -= 1
            if not self._bmc_users[bmc]:
                del self._bmc_users[bmc], self._bmc_busy[bmc]
            # Cancelled (the service stops): the caller still gets one result per node.
            report(PowerResult(target.node, request.op, False, error="power service stopped"))

    async def _operate(
        self, target: PowerTarget, request: PowerRequest, report: _Report, queued: float
    ) -> None:
        driver = self.drivers[target.scheme]
        started = trio.current_time()
        deadline = started + self.config.timeout
        progress = Progress(deadline=deadline)
        self._enter(target.bmc)
        try:
            async with trio.open_nursery() as watchdog:
                watchdog.start_soon(
                    self._report_timeout, target, request, report, deadline, queued, progress
                )
                attempts = 0
                outcome = Attempt(False, error="not attempted")
                while True:
                    attempts += 1
                    outcome = await self._attempt(driver, target, request, progress)
                    if outcome.ok or not outcome.retryable or attempts > self.config.retries:
                        break
                    pause = RETRY_BACKOFF * attempts
                    if report.done or trio.current_time() + pause >= deadline:
                        break
                    self.stats.retries += 1
                    await trio.sleep(pause)
                watchdog.cancel_scope.cancel()
        finally:
            self._leave(target.bmc)
        if report.done:  # reported as timed out: the log says what the BMC finally answered
            log.warning(
                "node %s: %s on BMC %s finished %.1f s after it was reported as timed out: %s",
                target.node,
                request.op,
                target.bmc,
                trio.current_time() - deadline,
                f"ok, state {outcome.state or '-'}" if outcome.ok else outcome.error,
            )
        report(
            PowerResult(
                target.node,
                request.op,
                outcome.ok,
                state=outcome.state,
                bootdev=outcome.bootdev,
                error=outcome.error,
                attempts=attempts,
                elapsed=trio.current_time() - queued,
                command_sent=progress.command_sent and request.op != "status",
            )
        )

    async def _attempt(
        self, driver: PowerDriver, target: PowerTarget, request: PowerRequest, progress: Progress
    ) -> Attempt:
        try:
            return await driver.attempt(target, request, progress)
        except Exception:  # a driver bug fails this node, not the service
            log.exception("power driver %s failed on node %s", driver.scheme, target.node)
            return Attempt(False, error="internal error in the power driver (logged on the head)")

    async def _report_timeout(
        self,
        target: PowerTarget,
        request: PowerRequest,
        report: _Report,
        deadline: float,
        queued: float,
        progress: Progress,
    ) -> None:
        await trio.sleep_until(deadline)
        self.stats.timeouts += 1
        sent = progress.command_sent and request.op != "status"
        if sent:
            self.stats.timeouts_after_command += 1
        report(
            PowerResult(
                target.node,
                request.op,
                False,
                error=timeout_error(request.op, self.config.timeout, target.bmc, progress),
                attempts=1,
                elapsed=trio.current_time() - queued,
                command_sent=sent,
            )
        )

    def _enter(self, bmc: str) -> None:
        s = self.stats
        s.operations += 1
        s.in_flight += 1
        s.peak_in_flight = max(s.peak_in_flight, s.in_flight)
        self._running_on[bmc] = self._running_on.get(bmc, 0) + 1
        s.peak_per_bmc = max(s.peak_per_bmc, self._running_on[bmc])

    def _leave(self, bmc: str) -> None:
        self.stats.in_flight -= 1
        self._running_on[bmc] -= 1
        if not self._running_on[bmc]:
            del self._running_on[bmc]
