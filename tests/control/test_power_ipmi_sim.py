"""The power service against OpenIPMI's ipmi_sim: a BMC implementation cwboot did not write.

ipmi_sim gets a config written here (Debian ships no example): one LAN
channel on 127.0.0.1, an admin user, and a ``chassis_control`` program that
records every call and keeps the power state and boot device in files.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cwboot.config import PowerConfig
from cwboot.control.power import PowerRequest, PowerResult, serve_power
from cwboot.sim import rmcpplus

IPMI_SIM = shutil.which("ipmi_sim")
pytestmark = pytest.mark.skipif(IPMI_SIM is None, reason="ipmi_sim not installed (Debian openipmi)")

CHASSIS_CONTROL = """#!/bin/sh
# ipmi_sim chassis_control: $1 = MC address, $2 = get|set, then names (get) or name value pairs (set)
dir=$(dirname "$0")
echo "$*" >> "$dir/calls.log"
mc=$1; verb=$2; shift 2
if [ "$verb" = get ]; then
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done
else
  while [ $# -gt 1 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done
fi
"""

LAN_CONF = """name "cwboot-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{dir}/chassis.sh 0x20"
  user 2 true "admin" "{password}" admin 10 md5
"""

EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answering(port: int, timeout: float = 10.0) -> None:
    """Send Get Channel Authentication Capabilities (sessionless) until the BMC answers."""
    head = bytes([0x20, 0x06 << 2])
    body = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])
    request = rmcpplus.encode_v15(
        head + bytes([rmcpplus.checksum(head)]) + body + bytes([rmcpplus.checksum(body)])
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        while time.monotonic() < deadline:
            s.sendto(request, ("127.0.0.1", port))
            try:
                s.recvfrom(512)
                return
            except OSError:
                continue
    raise AssertionError(f"ipmi_sim on port {port} did not answer in {timeout} s")


@pytest.fixture
def ipmi_sim(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(port, directory) of a running ipmi_sim whose chassis_control writes into directory."""
    assert IPMI_SIM is not None
    port = free_udp_port()
    (tmp_path / "chassis.sh").write_text(CHASSIS_CONTROL)
    (tmp_path / "chassis.sh").chmod(0o755)
    (tmp_path / "lan.conf").write_text(
        LAN_CONF.format(port=port, dir=tmp_path, password="sim-Password")
    )
    (tmp_path / "cmds.emu").write_text(EMU)
    (tmp_path / "state").mkdir()
    proc = subprocess.Popen(
        [IPMI_SIM, "-c", "lan.conf", "-f", "cmds.emu", "-s", str(tmp_path / "state"), "-n"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(port)
        assert proc.poll() is None, "ipmi_sim exited"
        yield port, tmp_path
    finally:
        proc.kill()
        proc.wait()


def test_every_operation_against_ipmi_sim(ipmi_sim: tuple[int, Path]) -> None:
    port, directory = ipmi_sim
    nodes = {
        "n0": {
            "name": "n0",
            "power_uri": f"ipmi://admin@127.0.0.1:{port}",
            "power_password": "sim-Password",
        },
        "n1": {
            "name": "n1",
            "power_uri": f"ipmi://admin@127.0.0.1:{port}",
            "power_password": "wrong",
        },
    }
    results: list[PowerResult] = []

    async def main() -> None:
        with trio.fail_after(60):
            await operate()

    async def operate() -> None:
        async with trio.open_nursery() as nursery:
            power = await nursery.start(
                serve_power, PowerConfig(workers=2, max_concurrent=2), nodes.get
            )
            for request in (
                PowerRequest("status"),
                PowerRequest("on", bootdev="pxe"),
                PowerRequest("status"),
                PowerRequest("bootdev", bootdev="disk", persistent=True),
                PowerRequest("cycle"),
                PowerRequest("reset"),
                PowerRequest("soft"),
                PowerRequest("off"),
            ):
                results.extend(await power.run(["n0"], request))
            results.extend(await power.run(["n1"], PowerRequest("status")))
            nursery.cancel_scope.cancel()

    trio.run(main)
    *ours, wrong = results
    assert all(r.ok for r in ours), ours
    assert [r.state for r in ours] == ["off", "on", "on", "", "on", "on", "off", "off"]
    assert not wrong.ok and wrong.error == "login refused: wrong user name or password"
    calls = (directory / "calls.log").read_text().splitlines()
    sets = [c for c in calls if " set " in c]
    assert sets == [
        "0x20 set boot pxe",
        "0x20 set power 1",
        "0x20 set boot default",
        "0x20 set power 0",
        "0x20 set reset 1",
        "0x20 set shutdown 1",
        "0x20 set power 0",
    ]
