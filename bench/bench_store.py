"""Store benchmarks: bulk node creation, cache warm-up, MAC lookups — each next to a baseline.

    .venv/bin/python bench/bench_store.py                 # full run (starts its own etcd)
    .venv/bin/python bench/bench_store.py --json out.json # also write the figures as JSON
    .venv/bin/python bench/bench_store.py --no-etcd --warm-nodes 20000   # quick, SQLite only

Measured in one run:
1. Bulk create of ``--nodes`` nodes with ``Objects.create_many`` on the
   embedded store and on etcd (nodes/s). Baseline: the same number of
   object puts written straight with ``store.txn`` in the same batch sizes
   (no validation, no index keys, no compares).
2. Cache warm-up of ``--warm-nodes`` nodes (``ObjectCache.run`` until
   started) from etcd and from SQLite. Baseline: the bare consistent read
   (``store.list_prefixes``) the warm-up starts with.
3. MAC lookup latency in the cache at 100 and ``--warm-nodes`` nodes
   (``node_by_mac`` and ``node_by_hwaddr``, ns/lookup). Baseline: a plain
   ``dict.get`` on a dict of the same MAC strings.

The machine is shared (2 cores): figures are noisy; ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cwboot.control.cache import ObjectCache  # noqa: E402
from cwboot.control.repo import Objects, encode, object_key  # noqa: E402
from cwboot.control.store.base import Put, Store  # noqa: E402
from cwboot.control.store.embedded import EmbeddedStore  # noqa: E402
from cwboot.control.store.etcd import EtcdStore  # noqa: E402
from tests.etcd_server import EtcdServer  # noqa: E402


def mac_of(i: int) -> str:
    return f"02:00:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def node_docs(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"index": i, "mac": [mac_of(i)], "groups": ["compute"], "attributes": {"rack": str(i // 40)}}
        for i in range(start, start + n)
    ]


async def bulk_create(store: Store, n: int) -> dict[str, float]:
    objs = Objects(store)
    await objs.create("naming_pool", {"name": "default"})
    t0 = time.perf_counter()
    created = await objs.create_many("node", node_docs(n))
    elapsed = time.perf_counter() - t0
    assert len(created) == n

    # Baseline: the object documents alone, straight into store.txn, same batch size as create_many's.
    per_txn = max(1, store.max_txn_ops // 3)
    docs = [{**d, "uid": f"baseline{i:08d}"} for i, d in enumerate(created)]
    t0 = time.perf_counter()
    for start in range(0, n, per_txn):
        batch = docs[start : start + per_txn]
        await store.txn([], [Put(object_key("bench_baseline", d["uid"]), encode(d)) for d in batch])
    baseline = time.perf_counter() - t0
    return {"nodes": n, "seconds": elapsed, "nodes_per_s": n / elapsed, "baseline_puts_per_s": n / baseline}


async def warm_up(store: Store) -> dict[str, float]:
    t0 = time.perf_counter()
    kvs, _ = await store.list_prefixes(["/cwboot/v1/node/", "/cwboot/v1/naming_pool/"])
    read = time.perf_counter() - t0
    cache = ObjectCache(store)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        await nursery.start(cache.run)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {"nodes": cache.count("node"), "seconds": elapsed, "baseline_read_seconds": read, "keys_read": len(kvs)}


def lookup_latency(cache: ObjectCache, n_nodes: int, samples: int = 200_000) -> dict[str, float]:
    macs = [mac_of(i) for i in range(0, n_nodes, max(1, n_nodes // 1000))]
    raws = [bytes.fromhex(m.replace(":", "")) for m in macs]
    plain = {mac: i for i, mac in enumerate(mac_of(i) for i in range(n_nodes))}
    assert all(cache.node_by_mac(m) is not None for m in macs)
    k = len(macs)
    loops = max(1, samples // k)

    def per_lookup(fn: Any, keys: list[Any]) -> float:
        def run() -> None:
            for key in keys:
                fn(key)

        best = min(timeit.repeat(run, number=loops, repeat=5))
        return best / (loops * k) * 1e9

    return {
        "nodes": n_nodes,
        "dict_get_ns": per_lookup(plain.get, macs),
        "node_by_mac_ns": per_lookup(cache.node_by_mac, macs),
        "node_by_hwaddr_ns": per_lookup(cache.node_by_hwaddr, raws),
    }


async def cache_of(store: Store) -> ObjectCache:
    cache = ObjectCache(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        nursery.cancel_scope.cancel()
    return cache


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "bulk_create": {},
        "warm_up": {},
        "lookup": [],
    }
    with tempfile.TemporaryDirectory(prefix="cwboot-bench-") as tmp:
        store: Store = EmbeddedStore(Path(tmp) / "bulk.sqlite3")
        results["bulk_create"]["embedded"] = await bulk_create(store, args.nodes)
        await store.aclose()

        small = EmbeddedStore(Path(tmp) / "small.sqlite3")
        await Objects(small).create_many("node", node_docs(100))
        results["lookup"].append(lookup_latency(await cache_of(small), 100))
        await small.aclose()

        big = EmbeddedStore(Path(tmp) / "big.sqlite3")
        await Objects(big).create_many("node", node_docs(args.warm_nodes))
        results["warm_up"]["embedded"] = await warm_up(big)
        if args.no_etcd:
            results["lookup"].append(lookup_latency(await cache_of(big), args.warm_nodes))
        await big.aclose()

        if not args.no_etcd:
            with EtcdServer(Path(tmp) / "etcd", extra_args=("--quota-backend-bytes=4294967296",)) as server:
                store = EtcdStore([server.endpoint])
                results["bulk_create"]["etcd"] = await bulk_create(store, args.nodes)
                server.wipe()
                t0 = time.perf_counter()
                await Objects(store).create_many("node", node_docs(args.warm_nodes))
                results["warm_up"]["etcd_seed_nodes_per_s"] = args.warm_nodes / (time.perf_counter() - t0)
                results["warm_up"]["etcd"] = await warm_up(store)
                results["lookup"].append(lookup_latency(await cache_of(store), args.warm_nodes))
                await store.aclose()
    return results


def print_table(r: dict[str, Any]) -> None:
    print("bulk create (Objects.create_many)      nodes   seconds   nodes/s   baseline raw puts/s   ratio")
    for backend, b in r["bulk_create"].items():
        print(
            f"  {backend:<34} {b['nodes']:>7} {b['seconds']:>9.2f} {b['nodes_per_s']:>9.0f}"
            f" {b['baseline_puts_per_s']:>21.0f} {b['nodes_per_s'] / b['baseline_puts_per_s']:>7.2f}"
        )
    print("cache warm-up (ObjectCache.run)        nodes   seconds   baseline read s   ratio")
    for backend, w in r["warm_up"].items():
        if isinstance(w, dict):
            print(
                f"  {backend:<34} {w['nodes']:>7} {w['seconds']:>9.2f} {w['baseline_read_seconds']:>17.2f}"
                f" {w['seconds'] / w['baseline_read_seconds']:>7.2f}"
            )
    if "etcd_seed_nodes_per_s" in r["warm_up"]:
        print(f"  (seeding etcd for the warm-up ran at {r['warm_up']['etcd_seed_nodes_per_s']:.0f} nodes/s)")
    print("MAC lookup in the cache                nodes   dict.get ns   node_by_mac ns   ratio   node_by_hwaddr ns")
    for lk in r["lookup"]:
        print(
            f"  {'':<34} {lk['nodes']:>7} {lk['dict_get_ns']:>13.1f} {lk['node_by_mac_ns']:>16.1f}"
            f" {lk['node_by_mac_ns'] / lk['dict_get_ns']:>7.2f} {lk['node_by_hwaddr_ns']:>19.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes per bulk create (default 10000)")
    parser.add_argument("--warm-nodes", type=int, default=100_000, help="nodes for warm-up/lookups (default 100000)")
    parser.add_argument("--no-etcd", action="store_true", help="SQLite only (no etcd server)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = trio.run(main, args)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
