"""A whole head node on loopback: every service binds, registers itself, answers from the store.

Real sockets on 127.0.0.1 (ports chosen by the kernel), the embedded store in a
temp dir, the REST API over HTTP, and the DHCP service spoken to as a relay
agent would (needs root for port 67): a node created through the API gets its
address from DHCP.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from cwboot import config as cwconfig
from cwboot.head import HeadPorts, LineReader, TftpProcess, run_head
from cwboot.protocol import dhcp

TOKEN = "test-admin-token"


def head_config(state: Path, **extra: str) -> cwconfig.Config:
    overrides = [
        f"head.state_dir={str(state)!r}",
        "head.name=h1",
        "head.advertise_address=127.0.0.1",
        "api.port=0",
        "http.port=0",
        "http.listen=127.0.0.1",
        "tftp.port=0",
        "tftp.listen=127.0.0.1",
        "dhcp.port=0",
        "dhcp.listen=127.0.0.1",
        f'api.admin_tokens=["{TOKEN}"]',
        "store.lease_ttl=5",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    return cwconfig.from_dict(_as_dict(overrides))


def _as_dict(overrides: list[str]) -> dict:
    data: dict = {}
    for text in overrides:
        section, key, value = cwconfig.parse_override(text)
        data.setdefault(section, {})[key] = value
    return data


def discover(mac: bytes, xid: int, relay: str) -> bytes:
    """A relayed DHCPDISCOVER (giaddr = our loopback address), as a PXE ROM would send."""
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 1, xid, 0, 0, b"\0" * 4, b"\0" * 4, b"\0" * 4,
        socket.inet_aton(relay), mac.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    options = bytes([53, 1, 1, 60, 9]) + b"PXEClient" + bytes([93, 2, 0, 0, 255])
    return fixed + b"\x63\x82\x53\x63" + options


def test_head_serves_every_service_from_the_store(tmp_path: Path) -> None:
    trio.run(_serves_every_service, tmp_path)


async def _serves_every_service(tmp_path: Path) -> None:
    cfg = head_config(tmp_path / "state")
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg))
        assert all((ports.api, ports.http, ports.tftp, ports.dhcp))
        assert any("DHCP" in line for line in ports.describe())
        api = f"http://127.0.0.1:{ports.api}/api/v1"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(headers=auth, timeout=10) as client:
            heads = (await client.get(f"{api}/heads")).json()
            assert [h["name"] for h in _items(heads)] == ["h1"]
            r = await client.post(f"{api}/naming_pools", json={"name": "default", "network": "10.54.0.0/16"})
            assert r.status_code in (200, 201), r.text
            r = await client.post(f"{api}/nodes", json={"index": 7, "mac": ["52:54:00:00:00:07"]})
            assert r.status_code in (200, 201), r.text

        # The node reaches the DHCP service through the cache (watch), not the store.
        # Replies to a relay go to giaddr:67 (RFC 2131 4.1): be a relay on a loopback address of our own.
        relay = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind((relay, 67))
            reply = None
            with trio.move_on_after(10):
                while reply is None:
                    await sock.sendto(
                        discover(bytes.fromhex("525400000007"), 0x1234, relay),
                        ("127.0.0.1", ports.dhcp),
                    )
                    with trio.move_on_after(0.5):
                        data, _ = await sock.recvfrom(4096)
                        reply = dhcp.parse_untrusted(data)
        assert reply is not None, "no DHCPOFFER for a node created through the API"
        assert socket.inet_ntoa(reply.yiaddr) == "10.54.0.107"

        # Power is wired in: the node (now in the cache) has no BMC -> a per-node error, not a 404.
        async with httpx.AsyncClient(headers=auth, timeout=10) as client:
            r = await client.post(f"{api}/power/status", json={"nodes": "n7"})
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert result["node"] == "n7" and result["ok"] is False and result["error"], result
        nursery.cancel_scope.cancel()


def _items(body: object) -> list:
    if isinstance(body, dict):
        for key in ("items", "objects", "heads"):
            if key in body:
                return body[key]
    assert isinstance(body, list)
    return body


def test_restart_keeps_objects(tmp_path: Path) -> None:
    trio.run(_restart_keeps_objects, tmp_path)


async def _restart_keeps_objects(tmp_path: Path) -> None:
    cfg = head_config(tmp_path / "state")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for attempt in range(2):
        async with trio.open_nursery() as nursery:
            ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg))
            api = f"http://127.0.0.1:{ports.api}/api/v1"
            async with httpx.AsyncClient(headers=auth, timeout=10) as client:
                if attempt == 0:
                    r = await client.post(f"{api}/boot_configs", json={"name": "keep", "cmdline": "quiet"})
                    assert r.status_code in (200, 201), r.text
                else:
                    r = await client.get(f"{api}/boot_configs/keep")
                    assert r.status_code == 200 and r.json()["cmdline"] == "quiet"
            nursery.cancel_scope.cancel()


def test_tftp_in_its_own_process_serves_the_loader_and_dies_with_the_head(tmp_path: Path) -> None:
    trio.run(_tftp_own_process, tmp_path)


async def _tftp_own_process(tmp_path: Path) -> None:
    from cwboot.services.tftp import fetch_tftp

    root = tmp_path / "tftp"
    root.mkdir()
    (root / "hello.bin").write_bytes(bytes(range(256)) * 300)
    cfg = head_config(tmp_path / "state", **{"tftp.own_process": "true", "tftp.root": repr(str(root)),
                                             "dhcp.enabled": "false", "api.enabled": "false"})  # fmt: skip
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg))
        child = ports.services["tftp"]
        assert child.pid != os.getpid() and ports.tftp == child.port
        result = await fetch_tftp("127.0.0.1", ports.tftp, "hello.bin", options={"blksize": "1024"})
        assert result.ok and result.data == bytes(range(256)) * 300
        # The child reports its counters over its stdout (within a second of a change).
        with trio.fail_after(10):
            while child.stats.get("outcomes") != {"completed": 1}:
                await trio.sleep(0.05)
        assert child.stats["requests"] == 1 and child.stats["bytes_sent"] >= 256 * 300
        assert child.reported_at is not None and child.bad_reports == 0
        nursery.cancel_scope.cancel()
    with trio.fail_after(10):
        while os.path.exists(f"/proc/{child.pid}") and "Z" not in _state(child.pid):
            await trio.sleep(0.05)


_HEAD_THEN_WAIT = """
import sys, trio
from cwboot import config as cwconfig
from cwboot.head import run_head

async def main():
    cfg = cwconfig.load(None, sys.argv[1:])
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(run_head, cfg)
        print(ports.services["tftp"].pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def test_tftp_child_exits_when_its_head_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the head no chance to stop its TFTP process: the child must notice alone."""
    overrides = [f"head.state_dir={str(tmp_path / 'state')!r}", "head.advertise_address=127.0.0.1",
                 "tftp.own_process=true", "tftp.listen=127.0.0.1", "tftp.port=0", "http.listen=127.0.0.1",
                 "http.port=0", "dhcp.enabled=false", "api.enabled=false", "power.enabled=false"]  # fmt: skip
    head = subprocess.Popen([sys.executable, "-c", _HEAD_THEN_WAIT, *overrides], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert head.stdout is not None
        child = int(head.stdout.readline())
        assert _state(child) not in ("gone", "Z")
        head.send_signal(signal.SIGKILL)
        head.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _state(child) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(child) in ("gone", "Z"), f"TFTP child {child} outlived its head"
    finally:
        head.kill()
        head.wait()
        if head.stdout is not None:
            head.stdout.close()
        if child and _state(child) not in ("gone", "Z"):
            os.kill(child, signal.SIGKILL)


def test_tftp_child_reports_are_read_line_by_line_and_bad_lines_counted() -> None:
    trio.run(_child_reports)


async def _child_reports() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    lines = LineReader(receive, limit=64)
    child = TftpProcess("127.0.0.1", 69, pid=1)
    await send.send_all(b'{"stats": {"requests": 1}}\n{"stats": {"req')
    await send.send_all(b'uests": 2}}\nnot json\n{"bound": 1}\n' + b"x" * 100)
    await send.aclose()
    read = []
    while (line := await lines.next_line()) is not None:
        read.append(line)
        child.take_report(line, 5.0)
    # The 100-byte line comes out in two pieces (limit 64); neither is a report.
    assert [len(line) for line in read[-2:]] == [64, 36]
    assert child.stats == {"requests": 2} and child.reported_at == 5.0
    assert child.bad_reports == 4


def test_activity_is_logged_when_it_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cwboot.head")
    trio.run(_activity_logged, tmp_path, caplog)


async def _activity_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = head_config(tmp_path / "state", **{"api.enabled": "false"})
    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg, stats_log_every=0.05))

        def summaries() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.getMessage().startswith("totals since start")]

        await trio.sleep(0.3)
        assert summaries() == []  # nothing happened: nothing logged
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.sendto(b"not DHCP", ("127.0.0.1", ports.dhcp))
        with trio.fail_after(10):
            while not summaries():
                await trio.sleep(0.05)
        await trio.sleep(0.3)
        # One line for the one change: DHCP replies/drops, HTTP requests/503s, TFTP transfers/failures.
        assert summaries() == [
            "totals since start: dhcp 0 replies, 1 drops; http 0 requests, 0 503s, 0 drops; tftp 0 transfers, 0 failed"
        ]
        nursery.cancel_scope.cancel()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_image_objects_follow_store_changes_made_without_the_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cwboot.head")
    trio.run(_image_objects_follow_the_store, tmp_path, caplog)


async def _image_objects_follow_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cwboot.control.images import ImageStore

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "motd").write_text("version one\n")
    # The CLI's view of the head's store: the same folder, written directly (no API).
    store = ImageStore(tmp_path / "images", chunk_size=64 * 1024)
    store.import_tree("img", tree)
    cfg = head_config(tmp_path / "state", **{"images.store_dir": repr(str(store.root)), "images.chunk_size": "65536",
                                             "dhcp.enabled": "false", "tftp.enabled": "false"})  # fmt: skip

    def resyncs() -> int:
        return sum("object re-synced" in r.getMessage() for r in caplog.records)

    async with trio.open_nursery() as nursery:
        ports: HeadPorts = await nursery.start(functools.partial(run_head, cfg, images_sync_every=0.1))
        api = f"http://127.0.0.1:{ports.api}/api/v1"
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:

            async def latest_becomes(version: str) -> None:
                with trio.fail_after(10):
                    while (await client.get(f"{api}/images/img")).json()["latest"] != version:
                        await trio.sleep(0.05)

            await latest_becomes("1")  # synced at start
            (tree / "motd").write_text("version two\n")
            store.import_tree("img", tree)
            await latest_becomes("2")
            doc = (await client.get(f"{api}/images/img")).json()
            assert [v["version"] for v in doc["versions"]] == ["1", "2"]
            store.rollback("img")
            await latest_becomes("1")
            # Nothing changed since: the probe finds the same (inode, mtime) and syncs nothing.
            await trio.sleep(0.5)
            assert resyncs() == 2
        nursery.cancel_scope.cancel()
