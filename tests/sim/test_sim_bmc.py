"""The BMC simulator against real clients: ipmitool -I lanplus and pyghmi's Command.

Each test serves BMCs from a trio loop in a thread of the test process (the
clients are blocking programs) and stops it at the end.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as pyghmi_command

from cwboot.sim import rmcpplus
from cwboot.sim.bmc import MAX_SESSIONS, BmcFarm, BmcOptions, SimulatedBmc, serve_bmcs

REPO = Path(__file__).resolve().parents[2]
IPMITOOL = shutil.which("ipmitool")
needs_ipmitool = pytest.mark.skipif(
    IPMITOOL is None, reason="ipmitool not installed (scripts/apt-packages.txt)"
)


@contextmanager
def running(bmcs: list[SimulatedBmc]) -> Iterator[BmcFarm]:
    """Serve ``bmcs`` on 127.0.0.1 from a trio loop in a thread; yields the farm."""
    ready = threading.Event()
    box: dict[str, object] = {}
    token_box: list[trio.lowlevel.TrioToken] = []
    stop = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            box["farm"] = await nursery.start(serve_bmcs, bmcs)
            token_box.append(trio.lowlevel.current_trio_token())
            ready.set()
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["farm"]  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def ipmitool(
    port: int, *args: str, suite: int = 3, password: str = "password"
) -> subprocess.CompletedProcess[str]:
    assert IPMITOOL is not None
    argv = [IPMITOOL, "-I", "lanplus", "-C", str(suite), "-H", "127.0.0.1", "-p", str(port)]
    argv += ["-U", "admin", "-P", password, "-R", "1", "-N", "1", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@needs_ipmitool
@pytest.mark.parametrize("suite", [3, 17])
def test_ipmitool_every_operation(suite: int) -> None:
    bmc = SimulatedBmc("b")
    with running([bmc]) as farm:
        port = farm.ports[0]
        assert (
            ipmitool(port, "chassis", "power", "status", suite=suite).stdout.strip()
            == "Chassis Power is off"
        )
        steps = [
            ("on", "Up/On", True),
            ("cycle", "Cycle", True),
            ("reset", "Reset", True),
            ("soft", "Soft", False),
            ("on", "Up/On", True),
            ("off", "Down/Off", False),
        ]
        for action, said, powered in steps:
            out = ipmitool(port, "chassis", "power", action, suite=suite)
            assert out.returncode == 0, out.stderr
            assert said in out.stdout
            assert bmc.power_on is powered
        assert ipmitool(port, "chassis", "bootdev", "pxe", suite=suite).returncode == 0
        assert (bmc.boot_device, bmc.boot_persistent) == ("pxe", False)
        out = ipmitool(port, "chassis", "bootdev", "disk", "options=persistent", suite=suite)
        assert out.returncode == 0, out.stderr
        assert (bmc.boot_device, bmc.boot_persistent) == ("disk", True)
        assert (
            "Force Boot from default Hard-Drive"
            in ipmitool(port, "chassis", "bootparam", "get", "5", suite=suite).stdout
        )
    assert bmc.history == ["on", "cycle", "reset", "soft", "on", "off"]
    # ipmitool logs out every time: no session left open, never two at once.
    assert bmc.stats.active == 0
    assert bmc.stats.peak_active == 1
    assert bmc.stats.sessions_closed == bmc.stats.sessions_opened


@needs_ipmitool
@pytest.mark.parametrize("suite", [0, 1, 2])
def test_ipmitool_suites_without_encryption_are_refused(suite: int) -> None:
    bmc = SimulatedBmc("b")
    with running([bmc]) as farm:
        out = ipmitool(farm.ports[0], "chassis", "power", "on", suite=suite)
    assert out.returncode != 0
    assert "no matching cipher suite" in out.stderr
    assert not bmc.power_on
    assert bmc.stats.sessions_opened == 0


@needs_ipmitool
def test_ipmitool_wrong_password() -> None:
    bmc = SimulatedBmc("b", BmcOptions(password="secret"))
    with running([bmc]) as farm:
        out = ipmitool(farm.ports[0], "chassis", "power", "on", password="wrong")
    assert out.returncode != 0
    assert "Unable to establish IPMI v2 / RMCP+ session" in out.stderr
    assert not bmc.power_on


def test_pyghmi_every_operation_on_suite_17() -> None:
    bmc = SimulatedBmc("b")
    with running([bmc]) as farm:
        cmd = pyghmi_command.Command(
            "127.0.0.1", "admin", "password", port=farm.ports[0], keepalive=False
        )
        # pyghmi asked for SHA-256 (suite 17) and got it: no fallback to suite 3.
        assert cmd.ipmi_session.currhashlen == 16
        assert cmd.get_power() == {"powerstate": "off"}
        assert cmd.set_bootdev("network") == {"bootdev": "network"}
        assert cmd.get_bootdev()["bootdev"] == "network"
        cmd.set_power("on")
        assert cmd.get_power() == {"powerstate": "on"}
        # The once-only boot device was used by that power-on.
        assert cmd.get_bootdev()["bootdev"] == "default"
        assert bmc.last_boot_device == "pxe"
        cmd.set_bootdev("hd", persist=True)
        assert cmd.get_bootdev() == {"bootdev": "hd", "persistent": True, "uefimode": False}
        cmd.set_power("reset")
        cmd.set_power("boot")
        cmd.set_power("shutdown")
        assert cmd.get_power() == {"powerstate": "off"}
        cmd.ipmi_session.logout()
    assert bmc.history == ["on", "reset", "reset", "soft"]
    assert bmc.stats.sessions_closed == 1 and bmc.stats.active == 0


def test_pyghmi_falls_back_to_suite_3_when_17_is_not_offered() -> None:
    bmc = SimulatedBmc("b", BmcOptions(cipher_suites=(3,)))
    with running([bmc]) as farm:
        cmd = pyghmi_command.Command(
            "127.0.0.1", "admin", "password", port=farm.ports[0], keepalive=False
        )
        assert cmd.ipmi_session.currhashlen == 12
        assert cmd.get_power() == {"powerstate": "off"}
        cmd.ipmi_session.logout()


def test_pyghmi_wrong_password() -> None:
    bmc = SimulatedBmc("b", BmcOptions(password="secret"))
    with (
        running([bmc]) as farm,
        pytest.raises(pyghmi_exc.IpmiException, match="Incorrect password"),
    ):
        pyghmi_command.Command("127.0.0.1", "admin", "wrong", port=farm.ports[0], keepalive=False)


def _open_session_request(tag: int, auth: int, integrity: int, conf: int) -> bytes:
    body = bytes([tag, 0, 0, 0]) + (1234).to_bytes(4, "little")
    body += bytes(
        [0, 0, 0, 8, auth, 0, 0, 0, 1, 0, 0, 8, integrity, 0, 0, 0, 2, 0, 0, 8, conf, 0, 0, 0]
    )
    return rmcpplus.encode_v20_clear(rmcpplus.PAYLOAD_OPEN_SESSION_REQUEST, body)


def test_session_table_is_bounded_like_a_real_bmc() -> None:
    bmc = SimulatedBmc("b")
    for i in range(MAX_SESSIONS):
        (reply,) = bmc.datagram_received_untrusted(_open_session_request(i, 1, 1, 1), now=0.0)
        assert reply[16 + 1] == rmcpplus.STATUS_OK
    (reply,) = bmc.datagram_received_untrusted(_open_session_request(99, 1, 1, 1), now=1.0)
    assert reply[16 + 1] == rmcpplus.STATUS_NO_RESOURCES
    # Abandoned handshakes expire; then there is room again.
    (reply,) = bmc.datagram_received_untrusted(_open_session_request(100, 3, 4, 1), now=100.0)
    assert reply[16 + 1] == rmcpplus.STATUS_OK
    assert bmc.stats.sessions_expired == MAX_SESSIONS


def test_garbage_is_dropped_and_counted_never_raised() -> None:
    bmc = SimulatedBmc("b")
    rng = random.Random(7)
    valid = _open_session_request(1, 1, 1, 1)
    for _ in range(3000):
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated[: rng.randrange(len(mutated) + 1)])
        bmc.datagram_received_untrusted(data, now=0.0)
    assert sum(bmc.stats.drops.values()) > 1000
    assert "not an RMCP/IPMI datagram" in bmc.stats.drops


def test_silent_bmc_answers_nothing_and_hook_sees_power_changes() -> None:
    seen: list[tuple[str, str]] = []
    silent = SimulatedBmc("s", BmcOptions(silent=True))
    assert silent.datagram_received_untrusted(_open_session_request(1, 1, 1, 1), now=0.0) == []
    assert silent.stats.drops == {"silent": 1}
    bmc = SimulatedBmc("b", hook=lambda b, action: seen.append((b.name, action)))
    with running([bmc]) as farm:
        cmd = pyghmi_command.Command(
            "127.0.0.1", "admin", "password", port=farm.ports[0], keepalive=False
        )
        cmd.set_power("on")
        cmd.set_power("off")
        cmd.ipmi_session.logout()
    assert seen == [("b", "on"), ("b", "off")]


def test_standalone_process_serves_many_bmcs_and_reports_statistics() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cwboot.sim.bmc", "--count", "50"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ports = json.loads(proc.stdout.readline())["ports"]
        assert len(set(ports)) == 50
        cmd = pyghmi_command.Command(
            "127.0.0.1", "admin", "password", port=ports[49], keepalive=False
        )
        cmd.set_power("on")
        cmd.ipmi_session.logout()
        proc.stdin.close()
        summary = json.loads(proc.stdout.readline())
        assert summary["powered_on"] == 1 and summary["sessions_opened"] == 1
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_bmcs_on_their_own_loopback_addresses_and_a_failing_hook() -> None:
    def broken_hook(bmc: SimulatedBmc, action: str) -> None:
        raise RuntimeError("harness bug")

    bmcs = [SimulatedBmc(f"b{i}", hook=broken_hook) for i in range(3)]
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            farm: BmcFarm = await nursery.start(functools.partial(serve_bmcs, bmcs, hosts=hosts))

            def power_on_all() -> None:
                for host, port in zip(farm.hosts, farm.ports, strict=True):
                    cmd = pyghmi_command.Command(
                        host, "admin", "password", port=port, keepalive=False
                    )
                    cmd.set_power("on")
                    cmd.ipmi_session.logout()

            await trio.to_thread.run_sync(power_on_all)
            nursery.cancel_scope.cancel()
            return farm.hosts

    assert trio.run(main) == hosts
    # The hook's exception was counted, the BMCs kept working.
    assert all(b.power_on and b.stats.drops == {"hook failed": 1} for b in bmcs)


def test_a_retransmitted_request_is_answered_not_run_twice() -> None:
    # Replies slower than pyghmi's first retransmit timer (0.5-1 s): it resends each request once.
    bmc = SimulatedBmc("slow", BmcOptions(delay=1.05))
    bmc.power_on = True
    with running([bmc]) as farm:
        cmd = pyghmi_command.Command(
            "127.0.0.1", "admin", "password", port=farm.ports[0], keepalive=False
        )
        assert cmd.raw_command(0x00, 0x02, data=[2])["code"] == 0  # chassis cycle
        cmd.ipmi_session.logout()
    assert bmc.stats.duplicates >= 1
    assert bmc.history == ["cycle"]
