"""cwboot's DHCP service against real clients, in namespaces made by the test.

busybox udhcpc and ISC dhclient run in the client namespace on a veth whose MAC
is a known node; each must end up bound to the node's address with the boot
options. perfdhcp (Kea 2.2) runs DORA in relay mode (giaddr = its address,
replies to port 67) against pre-loaded nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio

from cwboot.config import DhcpConfig
from cwboot.control.objects import validate_new
from cwboot.policy.node_table import NodeTable
from cwboot.services.dhcp import DhcpBound, serve_dhcp
from tests.services.dhcp_netns import CLIENT, SERVER, NetnsPair, perfdhcp_macs

pytestmark = pytest.mark.netns

MAC = "52:54:00:00:01:07"


def table(macs: list[str]) -> NodeTable:
    pool = validate_new(
        "naming_pool", {"name": "default", "network": "10.99.0.0/16", "ip_offset": 1000}, 0.0
    )
    docs = [
        {**validate_new("node", {"index": i, "mac": [m]}, 0.0), "name": f"n{i}"}
        for i, m in enumerate(macs)
    ]
    return NodeTable(docs, [pool])


@pytest.fixture
def pair() -> NetnsPair:
    p = NetnsPair()
    yield p  # type: ignore[misc]
    p.close()


def serve(
    pair: NetnsPair, lookup: NodeTable, client: Callable[[DhcpBound], Awaitable[None]]
) -> None:
    config = DhcpConfig(
        port=67, interface=pair.server_if, router=SERVER, dns_servers=[SERVER], domain="cluster"
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with pair.entered("server"):
                bound = await nursery.start(
                    partial(serve_dhcp, config, lookup, head_address=SERVER, http_port=8081)
                )
            with trio.fail_after(60):
                await client(bound)
            nursery.cancel_scope.cancel()

    trio.run(main)


def set_client_mac(pair: NetnsPair, mac: str) -> None:
    subprocess.run(
        [*pair.exec_prefix("client"), "ip", "link", "set", pair.client_if, "address", mac],
        check=True,
    )


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip("'")
    return out


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_busybox_udhcpc_gets_address_and_boot_options(pair: NetnsPair, tmp_path: Path) -> None:
    set_client_mac(pair, MAC)
    result = tmp_path / "bound.env"
    script = tmp_path / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {result}\nexit 0\n')
    script.chmod(0o755)

    async def client(bound: DhcpBound) -> None:
        cmd = [*pair.exec_prefix("client"), "busybox", "udhcpc", "-f", "-q", "-n", "-t", "3", "-T", "1",
               "-i", pair.client_if, "-s", str(script), "-x", "0x5d:0007", "-V", "PXEClient:Arch:00007"]  # fmt: skip
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()

    serve(pair, table([MAC]), client)
    env = env_file(result)
    assert env["ip"] == "10.99.3.232"  # 10.99.0.0 + 1000 + index 0
    assert env["subnet"] == "255.255.0.0" and env["router"] == SERVER and env["dns"] == SERVER
    assert env["serverid"] == SERVER and env["siaddr"] == SERVER and env["boot_file"] == "ipxe.efi"
    assert env["hostname"] == "n0" and env["domain"] == "cluster" and env["lease"] == "3600"


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient not installed")
def test_isc_dhclient_gets_address_and_boot_options(pair: NetnsPair, tmp_path: Path) -> None:
    set_client_mac(pair, MAC)
    result = tmp_path / "bound.env"
    script = tmp_path / "dhclient-script"
    script.write_text(f'#!/bin/sh\n[ "$reason" = BOUND ] && env > {result}\nexit 0\n')
    script.chmod(0o755)

    async def client(bound: DhcpBound) -> None:
        # -d keeps dhclient in the foreground after it is bound: wait for the script's BOUND, then stop it.
        cmd = [*pair.exec_prefix("client"), "timeout", "30", "dhclient", "-4", "-1", "-d", "-sf", str(script),
               "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"), pair.client_if]  # fmt: skip
        proc = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(25):
                while not (result.exists() and result.stat().st_size):
                    assert proc.poll() is None, "dhclient exited before binding"
                    await trio.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: timeout and dhclient both
            await proc.wait()

    serve(pair, table([MAC]), client)
    env = env_file(result)
    assert env["new_ip_address"] == "10.99.3.232" and env["new_subnet_mask"] == "255.255.0.0"
    assert env["new_routers"] == SERVER and env["new_domain_name_servers"] == SERVER
    assert env["new_dhcp_server_identifier"] == SERVER and env["new_filename"] == "undionly.kpxe"
    assert env["new_dhcp_lease_time"] == "3600"


@pytest.mark.skipif(shutil.which("perfdhcp") is None, reason="perfdhcp (kea-admin) not installed")
def test_perfdhcp_dora_in_relay_mode(pair: NetnsPair) -> None:
    base, count = "52:54:00:10:00:00", 200
    lookup = table(perfdhcp_macs(base, count))
    output: list[str] = []

    async def client(bound: DhcpBound) -> None:
        cmd = [*pair.exec_prefix("client"), "timeout", "20", "perfdhcp", "-4", "-g", "single", "-l", CLIENT,
               "-r", "200", "-R", str(count), "-p", "3", "-W", "1000000", "-s", "1", "-b", f"mac={base}",
               SERVER]  # fmt: skip
        proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        output.append(proc.stdout.decode())
        assert proc.returncode in (0, 3), proc.stderr.decode()  # 3: some drops (judged below)
        assert bound.stats.dropped == {}, bound.stats.as_dict()

    serve(pair, lookup, client)
    text = output[0]
    sent = [int(x) for x in re.findall(r"sent packets: (\d+)", text)]
    received = [int(x) for x in re.findall(r"received packets: (\d+)", text)]
    assert len(sent) == 2 and sent[0] >= 400, text  # DISCOVER-OFFER and REQUEST-ACK
    assert received[0] >= sent[0] * 0.99 and received[1] >= sent[1] * 0.99, text
