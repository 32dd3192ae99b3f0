"""GET /api/v1/stats and ``cwboot stats`` against a real head on loopback.

The head (every service, TFTP in its own process as by default) is made to
answer real traffic: a malformed and a good DHCP datagram (the good one as a
relay agent on a loopback address of our own, which needs root for port 67),
an HTTP 404 and a script URL with a bad MAC, a TFTP download and a TFTP request
for a missing file. The counters, drop reasons included, must then show it.
"""

from __future__ import annotations

import functools
import json
import random
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cwboot import cli
from cwboot.head import HeadPorts, activity_summary, run_head
from cwboot.protocol import dhcp
from cwboot.services.tftp import fetch_tftp
from tests.test_head import TOKEN, discover, head_config

READER = "test-read-token"
MAC = "52:54:00:00:00:09"


def test_stats_count_real_traffic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(_stats_count_real_traffic, tmp_path, capsys)


async def _stats_count_real_traffic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "hello.bin").write_bytes(bytes(range(256)) * 40)
    cfg = head_config(tmp_path / "state", **{"api.read_tokens": f'["{READER}"]', "tftp.root": repr(str(root))})
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg))
        api = f"http://127.0.0.1:{ports.api}/api/v1"
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as admin:
            r = await admin.post(f"{api}/naming_pools", json={"name": "default", "network": "10.54.0.0/16"})
            assert r.status_code == 201, r.text
            r = await admin.post(f"{api}/nodes", json={"index": 9, "mac": [MAC]})
            assert r.status_code == 201, r.text

        # Before any traffic: the counters are there and at zero.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {READER}"}, timeout=10) as reader:
            r = await reader.get(f"{api}/stats")
        assert r.status_code == 200, r.text
        before = r.json()
        assert before["head"] == "h1" and before["uptime"] >= 0
        assert before["services"]["dhcp"]["received"] == 0 and before["services"]["dhcp"]["drops"] == {}
        assert before["services"]["http"]["requests"] == 0

        await _dhcp_traffic(ports.dhcp)
        async with httpx.AsyncClient(timeout=10) as plain:
            assert (await plain.get(f"http://127.0.0.1:{ports.http}/no/such/file")).status_code == 404
            assert (await plain.get(f"http://127.0.0.1:{ports.http}/boot/ipxe/not-a-mac")).status_code == 404
        fetched = await fetch_tftp("127.0.0.1", ports.tftp, "hello.bin")
        assert fetched.ok
        missing = await fetch_tftp("127.0.0.1", ports.tftp, "missing.bin")
        assert not missing.ok

        # The TFTP child reports its counters within a second of a change: poll, bounded.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {READER}"}, timeout=10) as reader:
            stats: dict[str, Any] = {}
            with trio.move_on_after(15):
                while stats.get("tftp", {}).get("outcomes", {}).get("refused", 0) < 1:
                    r = await reader.get(f"{api}/stats")
                    assert r.status_code == 200, r.text
                    stats = r.json()["services"]
                    await trio.sleep(0.1)

        dhcp_stats = stats["dhcp"]
        assert dhcp_stats["replied"].get("offer", 0) >= 1, dhcp_stats
        assert [n for reason, n in dhcp_stats["drops"].items() if reason.startswith("bad packet")] == [1], dhcp_stats
        http_stats = stats["http"]
        assert http_stats["requests"] == 2 and http_stats["responses"] == {"404": 2}, http_stats
        assert http_stats["drops"] == {"bad mac in script URL": 1}
        assert http_stats["bytes_sent"] > 0 and http_stats["active_streams"] == 0
        tftp_stats = stats["tftp"]
        assert tftp_stats["pid"] == ports.services["tftp"].pid and tftp_stats["report_age"] is not None
        assert tftp_stats["outcomes"] == {"completed": 1, "refused": 1}, tftp_stats
        # (>=: on a busy machine the client may send its RRQ twice; the extra one is a counted drop)
        assert tftp_stats["requests"] >= 2 and tftp_stats["drops"]["file_not_found"] == 1, tftp_stats
        assert tftp_stats["bytes_sent"] >= 256 * 40
        assert "power" in stats
        assert activity_summary(stats).endswith("tftp 2 transfers, 1 failed")

        # No token, or an unknown one: 401. Listed in the OpenAPI document.
        async with httpx.AsyncClient(timeout=10) as anonymous:
            r = await anonymous.get(f"{api}/stats")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            r = await anonymous.get(f"{api}/stats", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
            doc = (await anonymous.get(f"{api}/openapi.json", headers={"Authorization": f"Bearer {READER}"})).json()
        operation = doc["paths"]["/api/v1/stats"]["get"]
        assert "drops" in operation["summary"] and "security" not in operation
        assert "services" in operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]

        # The CLI against the same head, with the read token.
        url = f"http://127.0.0.1:{ports.api}"
        capsys.readouterr()
        code = await trio.to_thread.run_sync(cli.main, ["stats", "--json", "--url", url, "--token", READER])
        out = capsys.readouterr().out
        assert code == 0
        answer = json.loads(out)
        assert answer["head"] == "h1" and answer["services"]["http"]["responses"] == {"404": 2}
        code = await trio.to_thread.run_sync(cli.main, ["stats", "--url", url, "--token", READER])
        table = capsys.readouterr().out.splitlines()
        assert code == 0
        assert table[0].split() == ["SERVICE", "COUNTER", "VALUE"]
        assert ["http", "bad", "mac", "in", "script", "URL", "1"] in [line.split() for line in table]
        assert ["tftp", "refused", "1"] in [line.split() for line in table]
        code = await trio.to_thread.run_sync(cli.main, ["stats", "--url", url, "--token", "nope"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "unknown token" in err and "401" in err
        nursery.cancel_scope.cancel()


async def _dhcp_traffic(port: int) -> None:
    """One malformed datagram, then DISCOVERs as a relay until one is answered."""
    relay = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind((relay, 67))
        await sock.sendto(b"\x01\x01\x06\x00 too short for BOOTP", ("127.0.0.1", port))
        reply = None
        with trio.move_on_after(10):
            while reply is None:
                await sock.sendto(discover(bytes.fromhex(MAC.replace(":", "")), 0x99, relay), ("127.0.0.1", port))
                with trio.move_on_after(0.5):
                    data, _ = await sock.recvfrom(4096)
                    reply = dhcp.parse_untrusted(data)
    assert reply is not None, "no DHCPOFFER"
