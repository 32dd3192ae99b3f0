"""Power control through the REST API and the ``cwboot power`` CLI, against simulated BMCs.

A background trio loop runs a real embedded store, the object cache (the
power service reads nodes and their passwords from it), the power service
with its IPMI worker processes, the simulated BMCs and the API on hypercorn;
the test thread drives the CLI's ``main()`` and httpx.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cwboot.api import create_app, serve_api
from cwboot.api.power import power_routes
from cwboot.cli import main as cli_main
from cwboot.config import Config, from_dict
from cwboot.control.cache import ObjectCache
from cwboot.control.power import serve_power
from cwboot.control.repo import Objects
from cwboot.control.store import open_store
from cwboot.sim.bmc import BmcOptions, SimulatedBmc, make_bmcs, serve_bmcs

ADMIN = "power-admin-token"
READER = "power-read-token"
SECRET = "bmc-Secret-42"


@dataclass
class Head:
    url: str
    bmcs: list[SimulatedBmc]

    def client(self, token: str = ADMIN) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=60
        )


@contextmanager
def power_head(tmp_path: Path, bmcs: list[SimulatedBmc], timeout: float = 2.0) -> Iterator[Head]:
    config: Config = from_dict(
        {
            "head": {"state_dir": str(tmp_path)},
            "api": {
                "listen": "127.0.0.1",
                "port": 0,
                "admin_tokens": [ADMIN],
                "read_tokens": [READER],
            },
            "power": {"workers": 4, "max_concurrent": 8, "timeout": timeout},
        }
    )
    started: queue.Queue[Any] = queue.Queue()

    async def run() -> None:
        store = open_store(config)
        try:
            objects = Objects(store)
            cache = ObjectCache(store)
            async with trio.open_nursery() as nursery:
                farm = await nursery.start(serve_bmcs, bmcs)
                await objects.create_many(
                    "node",
                    [
                        {
                            "name": f"n{i}",
                            "index": i,
                            "power_uri": f"ipmi://admin@127.0.0.1:{port}",
                            "power_password": SECRET,
                        }
                        for i, port in enumerate(farm.ports)
                    ],
                )
                await nursery.start(cache.run)
                await cache.sync()
                power = await nursery.start(
                    serve_power, config.power, lambda name: cache.get("node", name)
                )
                app = create_app(objects, config, power_routes(power))
                binding = await nursery.start(serve_api, app, config)
                started.put((binding.url, trio.lowlevel.current_trio_token(), nursery.cancel_scope))
        finally:
            await store.aclose()

    failure: list[BaseException] = []

    def thread_main() -> None:
        try:
            trio.run(run)
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)
            started.put(exc)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    got = started.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    url, token, scope = got
    try:
        yield Head(url, bmcs)
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(30)
        assert not thread.is_alive()
        if failure:
            raise failure[0]


def cli(head: Head, *argv: str) -> int:
    return cli_main([*argv, "--url", head.url, "--token", ADMIN])


def test_cli_every_operation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with power_head(tmp_path, make_bmcs(4, BmcOptions(password=SECRET))) as head:
        assert cli(head, "power", "status", "n[0-3]") == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == [
            "NODE",
            "RESULT",
            "STATE",
            "BOOTDEV",
            "ATTEMPTS",
            "SECONDS",
            "ERROR",
        ]
        # Rows come in completion order, as each node finishes.
        assert sorted(line.split()[:3] for line in out[1:]) == [[f"n{i}", "ok", "off"] for i in range(4)]

        assert cli(head, "power", "on", "n[0-1]", "--bootdev", "pxe") == 0
        assert [b.power_on for b in head.bmcs] == [True, True, False, False]
        assert [b.last_boot_device for b in head.bmcs[:2]] == ["pxe", "pxe"]
        capsys.readouterr()

        assert cli(head, "power", "bootdev", "disk", "n2", "--once", "--json") == 0
        lines = capsys.readouterr().out.splitlines()  # one JSON object a line (NDJSON)
        assert [json.loads(line) for line in lines] == [
            {"node": "n2", "op": "bootdev", "ok": True, "bootdev": "disk", "attempts": 1,
             "elapsed": json.loads(lines[0])["elapsed"]}
        ]
        assert (head.bmcs[2].boot_device, head.bmcs[2].boot_persistent) == ("disk", False)
        assert cli(head, "power", "bootdev", "pxe", "n3") == 0
        assert (head.bmcs[3].boot_device, head.bmcs[3].boot_persistent) == ("pxe", True)

        for op in ("cycle", "reset", "soft", "on", "off"):
            assert cli(head, "power", op, "n0,n2") == 0, op
        assert head.bmcs[0].history == ["on", "cycle", "reset", "soft", "on", "off"]
        assert head.bmcs[2].history == [
            "on",
            "reset",
            "soft",
            "on",
            "off",
        ]  # cycling an off node boots it


def test_cli_reports_failed_nodes_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bmcs = [
        *make_bmcs(2, BmcOptions(password=SECRET)),
        SimulatedBmc("wrong", BmcOptions(password="not-it")),
    ]
    with power_head(tmp_path, bmcs) as head:
        assert cli(head, "power", "on", "n[0-2]", "nobody") == 1
        captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    assert "FAILED" in rows["n2"] and "wrong user name or password" in rows["n2"]
    assert "no node named 'nobody'" in rows["nobody"]
    assert " ok " in rows["n0"] and " ok " in rows["n1"]
    assert "cwboot: 2 of 4 nodes failed" in captured.err
    assert SECRET not in captured.out + captured.err


def test_api_power_endpoint(tmp_path: Path) -> None:
    with power_head(tmp_path, make_bmcs(3, BmcOptions(password=SECRET))) as head:
        with head.client() as admin:
            r = admin.post("/api/v1/power/on", json={"nodes": "n[0-2]", "bootdev": "pxe"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["op"] == "on" and body["ok"] == 3 and body["failed"] == 0
            assert {x["node"] for x in body["results"]} == {"n0", "n1", "n2"}
            assert SECRET not in r.text
            assert (
                admin.post("/api/v1/power/status", json={"nodes": ["n0", "n[1-2]"]}).json()["ok"]
                == 3
            )
            # Malformed requests are 400 / 404 with the reason; nothing is attempted.
            assert admin.post("/api/v1/power/explode", json={"nodes": "n0"}).status_code == 404
            for bad, why in (
                ({"nodes": []}, "field 'nodes'"),
                ({"nodes": "n[0-"}, "field 'nodes'"),
                ({"nodes": "n0", "bootdev": "floppy"}, "unknown boot device"),
                ({"nodes": "n0", "color": "red"}, "unknown field 'color'"),
            ):
                r = admin.post("/api/v1/power/on", json=bad)
                assert r.status_code == 400 and why in r.json()["error"], (bad, r.text)
            r = admin.post("/api/v1/power/bootdev", json={"nodes": "n0"})
            assert r.status_code == 400 and "bootdev needs a device" in r.json()["error"]
            # Reads of the node never show the BMC password.
            node = admin.get("/api/v1/nodes/n0").json()
            assert node["power_password_set"] is True and SECRET not in json.dumps(node)
        with head.client(READER) as reader:
            assert reader.post("/api/v1/power/status", json={"nodes": "n0"}).status_code == 403
        assert all(b.power_on for b in head.bmcs)
        assert sum(b.stats.sessions_opened for b in head.bmcs) == 6


# Two fast BMCs and one that holds each reply 0.4 s (an operation is ~7 round trips).
def fast_and_slow_bmcs() -> list[SimulatedBmc]:
    return [
        *make_bmcs(2, BmcOptions(password=SECRET)),
        SimulatedBmc("slow", BmcOptions(password=SECRET, delay=0.4)),
    ]


def slow_node_done(head: Head) -> bool:
    """Whether the slow BMC (n2) has logged its session out: its operation is over."""
    return head.bmcs[2].stats.sessions_closed > 0


def test_api_streams_each_node_as_it_finishes(tmp_path: Path) -> None:
    with power_head(tmp_path, fast_and_slow_bmcs(), timeout=30.0) as head, head.client() as admin:
        for params, headers in (({"stream": "1"}, {}), ({}, {"accept": "application/x-ndjson"})):
            seen: list[tuple[dict[str, Any], bool]] = []
            with admin.stream(
                "POST", "/api/v1/power/on", params=params, headers=headers, json={"nodes": "n[0-2]"}
            ) as r:
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/x-ndjson"
                for line in r.iter_lines():
                    # Checked on arrival: was the slow node still running?
                    seen.append((json.loads(line), slow_node_done(head)))
            assert [(x["node"], x["ok"]) for x, _ in seen[:2]] in (
                [("n0", True), ("n1", True)],
                [("n1", True), ("n0", True)],
            )
            assert [done for _, done in seen[:2]] == [False, False], "fast results waited for the slow one"
            assert (seen[2][0]["node"], seen[2][0]["ok"], seen[2][1]) == ("n2", True, True)
            head.bmcs[2].stats.sessions_closed = 0
        # Without asking, the answer is still one JSON document; a bad flag is a 400.
        r = admin.post("/api/v1/power/status", json={"nodes": "n0"})
        assert r.headers["content-type"] == "application/json" and r.json()["ok"] == 1
        r = admin.post("/api/v1/power/status?stream=yes", json={"nodes": "n0"})
        assert r.status_code == 400 and "'stream'" in r.json()["error"]
        r = admin.post("/api/v1/power/on?stream=1", json={"nodes": "n[0-"})
        assert r.status_code == 400 and "field 'nodes'" in r.json()["error"]


def test_cli_prints_each_row_as_it_arrives(tmp_path: Path) -> None:
    with power_head(tmp_path, fast_and_slow_bmcs(), timeout=30.0) as head:
        for extra in ((), ("--json",)):
            argv = [sys.executable, "-m", "cwboot", "power", "cycle", "n[0-2]", "nobody", *extra]
            with subprocess.Popen(
                [*argv, "--url", head.url, "--token", ADMIN],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as cli_process:
                assert cli_process.stdout is not None and cli_process.stderr is not None
                # Each line with whether the slow node was still running when it was printed.
                seen = [(line.rstrip("\n"), slow_node_done(head)) for line in cli_process.stdout]
                err = cli_process.stderr.read()
            assert cli_process.returncode == 1 and "cwboot: 1 of 4 nodes failed" in err, err
            if not extra:
                header, *seen = seen
                assert header[0].split()[:2] == ["NODE", "RESULT"]
                nodes = [(line.split()[0], done) for line, done in seen]
            else:
                nodes = [(json.loads(line)["node"], done) for line, done in seen]
            # "nobody" and the fast nodes are printed while the slow one still runs.
            assert sorted(nodes[:3]) == [("n0", False), ("n1", False), ("nobody", False)], seen
            assert nodes[3] == ("n2", True), seen
            head.bmcs[2].stats.sessions_closed = 0
