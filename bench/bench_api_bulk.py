"""Bulk add of N nodes (default 10,000) through the REST API, against the store directly.

For each backend (embedded SQLite; etcd, a real server started like the tests
do) and each path, on a fresh store:

  direct   Objects.create_many on the store, in-process (the baseline)
  api      one POST /api/v1/nodes with a JSON list, served by hypercorn,
           answered with every created object (client: httpx in the same
           process, so they share the GIL; encode/decode on both sides counted)
  api-min  the same with `Prefer: return=minimal` (uid and name only), as the CLI sends it
  cli      `python -m cwboot nodes add --file nodes.json` in a subprocess
           (includes interpreter start-up and reading the file)

Prints seconds, nodes/s and the ratio to the direct baseline of the same
backend measured in the same run (median of --repeat runs; the paths take
turns within each round so a change in machine load hits them alike).

    .venv/bin/python bench/bench_api_bulk.py [--nodes 10000] [--repeat 3] [--backends embedded,etcd]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from cwboot.config import Config  # noqa: E402
from cwboot.control.repo import Objects  # noqa: E402
from cwboot.control.store import open_store  # noqa: E402
from tests.api.harness import ADMIN, api_config, served_api  # noqa: E402
from tests.etcd_server import EtcdServer  # noqa: E402


def node_docs(n: int) -> list[dict[str, Any]]:
    return [{"index": i, "mac": f"52:54:{i >> 24 & 0xFF:02x}:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}", "groups": ["bench"]} for i in range(n)]


class Backend:
    """Hands out configs of fresh, empty stores of one backend."""

    def __init__(self, name: str, workdir: Path, etcd: EtcdServer | None) -> None:
        self.name = name
        self.workdir = workdir
        self.etcd = etcd
        self.runs = 0

    def fresh_config(self) -> Config:
        self.runs += 1
        state = self.workdir / f"{self.name}-{self.runs}"
        state.mkdir()
        config = api_config(state)
        if self.etcd is not None:
            self.etcd.wipe()
            config.store.backend = "etcd"
            config.store.etcd_endpoints = [self.etcd.endpoint]
        return config


async def _prepare(config: Config) -> None:
    """Create the default naming pool, so no path pays for it inside the timing."""
    store = open_store(config)
    try:
        await Objects(store).create("naming_pool", {"name": "default"})
    finally:
        await store.aclose()


def time_direct(config: Config, docs: list[dict[str, Any]]) -> float:
    trio.run(_prepare, config)

    async def run() -> float:
        store = open_store(config)
        try:
            objects = Objects(store)
            start = time.perf_counter()
            created = await objects.create_many("node", docs)
            elapsed = time.perf_counter() - start
            assert len(created) == len(docs)
            return elapsed
        finally:
            await store.aclose()

    return trio.run(run)


def time_api(config: Config, docs: list[dict[str, Any]], minimal: bool = False) -> float:
    trio.run(_prepare, config)
    headers = {"prefer": "return=minimal"} if minimal else {}
    with served_api(config) as api, api.client() as client:
        client.get("/api/v1/health").raise_for_status()  # connection open before the clock starts
        start = time.perf_counter()
        r = client.post("/api/v1/nodes", json=docs, headers=headers, timeout=600)
        created = r.json()
        elapsed = time.perf_counter() - start
        assert r.status_code == 201, r.text[:300]
        assert len(created) == len(docs)
    return elapsed


def time_api_minimal(config: Config, docs: list[dict[str, Any]]) -> float:
    return time_api(config, docs, minimal=True)


def time_cli(config: Config, docs: list[dict[str, Any]]) -> float:
    trio.run(_prepare, config)
    path = Path(config.head.state_dir) / "nodes.json"
    path.write_text(json.dumps(docs))
    with served_api(config) as api:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CWBOOT_URL": api.url, "CWBOOT_TOKEN": ADMIN}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "cwboot", "nodes", "add", "--file", str(path)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        elapsed = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
    return elapsed


PATHS: dict[str, Callable[[Config, list[dict[str, Any]]], float]] = {
    "direct": time_direct,
    "api": time_api,
    "api-min": time_api_minimal,
    "cli": time_cli,
}


@contextmanager
def backend(name: str, workdir: Path) -> Iterator[Backend]:
    if name == "embedded":
        yield Backend(name, workdir, None)
        return
    data = workdir / "etcd"
    data.mkdir()
    with EtcdServer(data, extra_args=("--quota-backend-bytes=8589934592",)) as etcd:
        yield Backend(name, workdir, etcd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--backends", default="embedded,etcd")
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args()
    docs = node_docs(args.nodes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cwboot-bench-api-") as tmp:
        for name in args.backends.split(","):
            with backend(name, Path(tmp)) as b:
                paths = args.paths.split(",")
                times: dict[str, list[float]] = {path: [] for path in paths}
                for _ in range(args.repeat):
                    for path in paths:
                        times[path].append(PATHS[path](b.fresh_config(), docs))
                baseline = statistics.median(times[paths[0]])
                for path in paths:
                    median = statistics.median(times[path])
                    rows.append((name, path, median, min(times[path]), args.nodes / median, median / baseline))
                    print(f"  {name:9} {path:7} runs: {', '.join(f'{t:.2f}s' for t in times[path])}", file=sys.stderr)
    print(f"\nbulk add of {args.nodes} nodes (median of {args.repeat}; 'x direct' = time / direct time, same backend)\n")
    header = f"{'backend':9} {'path':7} {'median s':>9} {'best s':>8} {'nodes/s':>9} {'x direct':>9}"
    print(header)
    print("-" * len(header))
    for name, path, median, best, rate, ratio in rows:
        print(f"{name:9} {path:7} {median:9.2f} {best:8.2f} {rate:9.0f} {ratio:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
