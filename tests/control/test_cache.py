"""ObjectCache: loads, follows the watch, and recovers from compaction and cut watches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio.testing import trio_test

from cwboot.control.cache import ObjectCache
from cwboot.control.repo import Objects, encode, object_key
from cwboot.control.store.base import Compare, Delete, KeyValue, Put, Store, WatchEvent
from cwboot.control.store.embedded import EmbeddedStore
from cwboot.control.store.etcd import EtcdStore
from tests.control.conftest import StoreFactory
from tests.etcd_server import EtcdServer


async def populate(objs: Objects) -> None:
    await objs.create("naming_pool", {"name": "default", "network": "10.1.0.0/16", "ip_offset": 10})
    await objs.create("boot_config", {"name": "compute", "cmdline": "quiet"})
    await objs.create("node", {"index": 1, "mac": ["52:54:00:00:00:01"], "boot_config": "compute"})
    await objs.create("node", {"index": 2, "mac": ["52:54:00:00:00:02", "52:54:00:00:01:02"], "ip": "10.9.9.9"})


@trio_test
async def test_cache_loads_everything_then_follows_writes(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    cache = ObjectCache(store)
    try:
        await populate(objs)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            n1 = cache.get("node", "n1")
            assert n1 is not None and cache.get("node", n1["uid"]) is n1
            assert cache.node_by_mac("52:54:00:00:00:01") is n1
            assert cache.node_by_hwaddr(bytes.fromhex("525400000102"))["name"] == "n2"  # type: ignore[index]
            assert cache.node_ip(n1) == "10.1.0.11"
            assert cache.node_ip(cache.get("node", "n2")) == "10.9.9.9"  # type: ignore[arg-type]
            assert cache.get("boot_config", "compute")["cmdline"] == "quiet"  # type: ignore[index]
            assert cache.count("node") == 2 and cache.get("node", "n9") is None and cache.get("gizmo", "x") is None

            await objs.create("node", {"index": 3, "mac": ["52:54:00:00:00:03"]})
            await objs.update("node", "n1", {"mac": ["52:54:00:00:00:11"], "index": 4})
            await objs.delete("node", "n2")
            await cache.sync()
            assert sorted(n["name"] for n in cache.all("node")) == ["n3", "n4"]
            assert cache.node_by_mac("52:54:00:00:00:01") is None
            assert cache.node_by_mac("52:54:00:00:00:11")["name"] == "n4"  # type: ignore[index]
            assert cache.get("node", "n1") is None and cache.node_by_mac("52:54:00:00:01:02") is None
            assert cache.node_by_hwaddr(bytes.fromhex("525400000102")) is None
            assert cache.resyncs == 0
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


@trio_test
async def test_readers_never_see_half_a_transaction(make_store: StoreFactory) -> None:
    store = make_store()
    cache = ObjectCache(store)
    seen: set[int] = set()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)

            async def observe() -> None:
                while True:
                    seen.add(cache.count("boot_config"))
                    await trio.sleep(0)

            nursery.start_soon(observe)
            for round_ in range(20):
                docs = [{"uid": f"u{round_}x{i}", "name": f"bc{round_}x{i}"} for i in range(30)]
                rev = await store.txn([], [Put(object_key("boot_config", d["uid"]), encode(d)) for d in docs])
                assert rev is not None
                await cache.wait_for_revision(rev, timeout=10)
                rev = await store.txn([], [Delete(object_key("boot_config", d["uid"])) for d in docs])
                assert rev is not None
                await cache.wait_for_revision(rev, timeout=10)
            nursery.cancel_scope.cancel()
        assert seen == {0, 30}
    finally:
        await store.aclose()


@trio_test
async def test_wait_for_revision_times_out() -> None:
    cache = ObjectCache(None)  # type: ignore[arg-type]
    with pytest.raises(trio.TooSlowError):
        await cache.wait_for_revision(5, timeout=0.05)


class InterruptedStore(Store):
    """Delegates to a real store; before the first watch starts, runs ``before_watch``
    (which writes and compacts), so the cache's resume revision is already gone."""

    def __init__(self, inner: Store, before_watch: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.before_watch: Callable[[], Awaitable[None]] | None = before_watch

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.inner.list(prefix)

    async def list_prefixes(self, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        return await self.inner.list_prefixes(prefixes)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        return await self.inner.txn(compares, ops)

    @asynccontextmanager
    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        hook, self.before_watch = self.before_watch, None
        if hook is not None:
            await hook()
        inner: AbstractAsyncContextManager[AsyncIterator[WatchEvent]] = self.inner.watch(prefix, from_revision)
        async with inner as events:
            yield events

    async def grant_lease(self, ttl: int) -> int:
        return await self.inner.grant_lease(ttl)

    async def refresh_lease(self, lease: int) -> None:
        await self.inner.refresh_lease(lease)

    async def revoke_lease(self, lease: int) -> None:
        await self.inner.revoke_lease(lease)

    async def aclose(self) -> None:
        await self.inner.aclose()


@trio_test
async def test_cache_recovers_from_a_compacted_watch(make_store: StoreFactory, request: pytest.FixtureRequest) -> None:
    inner = make_store()
    objs = Objects(inner)

    async def write_and_compact() -> None:
        await objs.create("node", {"index": 7, "mac": ["52:54:00:00:00:07"]})
        await objs.update("node", "n7", {"description": "written while the cache was not watching"})
        _, revision = await inner.list("/cwboot/v1/node/")
        if isinstance(inner, EtcdStore):
            server: EtcdServer = request.getfixturevalue("etcd_server")
            await trio.to_thread.run_sync(server.etcdctl, "compact", str(revision))
        else:
            assert isinstance(inner, EmbeddedStore)
            await inner.compact(revision)

    store = InterruptedStore(inner, write_and_compact)
    cache = ObjectCache(store, backoff_min=0.01)
    try:
        await populate(objs)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            assert cache.get("node", "n7") is None
            with trio.fail_after(10):
                while cache.resyncs == 0:
                    await trio.sleep(0.01)
            assert "WatchCompacted" in cache.last_error
            n7 = cache.get("node", "n7")
            assert n7 is not None and n7["description"].startswith("written while")
            # And it follows the watch again afterwards.
            await objs.create("node", {"index": 8})
            await cache.sync()
            assert cache.get("node", "n8") is not None and cache.resyncs == 1
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


@pytest.mark.etcd
@trio_test
async def test_cache_recovers_after_etcd_is_cut_and_compacted(tmp_path: Path) -> None:
    """etcd dies under the cache (watch cut), comes back, is written and `etcdctl compact`ed meanwhile."""
    with EtcdServer(tmp_path / "etcd") as server:
        writer = EtcdStore([server.endpoint])
        cache_store = EtcdStore([server.endpoint], timeout=1.0)
        objs = Objects(writer)
        cache = ObjectCache(cache_store, backoff_min=0.3, backoff_max=1.0)
        try:
            await populate(objs)
            async with trio.open_nursery() as nursery:
                await nursery.start(cache.run)
                await trio.to_thread.run_sync(server.stop)
                with trio.fail_after(10):
                    while "StoreUnavailable" not in cache.last_error:
                        await trio.sleep(0.02)
                await trio.to_thread.run_sync(server.start)
                await objs.create("node", {"index": 5, "mac": ["52:54:00:00:00:05"]})
                await objs.delete("node", "n1")
                _, revision = await writer.list("/cwboot/v1/")
                await trio.to_thread.run_sync(server.etcdctl, "compact", str(revision))
                await cache.wait_for_revision(revision, timeout=20)
                assert cache.node_by_mac("52:54:00:00:00:05")["name"] == "n5"  # type: ignore[index]
                assert cache.get("node", "n1") is None and cache.node_by_mac("52:54:00:00:00:01") is None
                assert cache.resyncs >= 1
                await objs.create("node", {"index": 6})
                await cache.sync()
                assert cache.get("node", "n6") is not None
                nursery.cancel_scope.cancel()
        finally:
            await writer.aclose()
            await cache_store.aclose()


@trio_test
async def test_embedded_restart_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = EmbeddedStore(path)
    objs = Objects(store)
    await populate(objs)
    await objs.create_many("node", [{"index": i} for i in range(10, 110)])
    _, revision = await store.list("/cwboot/v1/")
    before = await objs.list("node")
    await store.aclose()

    store = EmbeddedStore(path)
    try:
        cache = ObjectCache(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            assert cache.revision == revision and cache.count("node") == 102
            assert await Objects(store).list("node") == before
            # Revisions go on from where they were; the old history is still watchable.
            node = await Objects(store).create("node", {"index": 200})
            await cache.sync()
            assert cache.revision == revision + 1 and cache.get("node", node["uid"]) is not None
            async with store.watch("/cwboot/v1/node/", 2) as events:
                first = await events.__anext__()
            assert first.type == "put"
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
