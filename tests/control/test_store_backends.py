"""What only one backend does: SQLite's bounded log, clock-driven leases and file ownership;
etcd going away (StoreUnavailable) and open_store's choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import trio_test

from cwboot.config import from_dict
from cwboot.control.store import open_store
from cwboot.control.store.base import Put, StoreUnavailable, WatchCompacted
from cwboot.control.store.embedded import EmbeddedStore
from cwboot.control.store.etcd import EtcdStore
from tests.etcd_server import EtcdServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@trio_test
async def test_event_log_is_bounded_and_old_watches_are_compacted(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db", max_events=100)
    try:
        first = await store.put("/k/0", b"x")
        for i in range(200):
            await store.put(f"/k/{i}", b"x")
        rows = store._db.execute("SELECT count(*) FROM events").fetchone()[0]
        assert rows <= 125 and store.compact_revision > first
        with pytest.raises(WatchCompacted):
            async with store.watch("/k/", first):
                pass
        # The newest revision always stays, however large.
        rev = await store.txn([], [Put(f"/big/{i}", b"y") for i in range(300)])
        assert rev is not None and store.compact_revision == rev
        async with store.watch("/big/", rev) as events:
            assert (await events.__anext__()).mod_revision == rev
    finally:
        await store.aclose()


@trio_test
async def test_leases_follow_the_injected_clock_and_survive_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    store = EmbeddedStore(tmp_path / "s.db", clock=clock)
    lease = await store.grant_lease(10)
    await store.put("/l/a", b"1", lease=lease)
    await store.aclose()

    store = EmbeddedStore(tmp_path / "s.db", clock=clock)
    try:
        clock.now += 9
        await store.refresh_lease(lease)  # expires at +19 now
        clock.now += 9
        assert await store.get("/l/a") is not None
        rev = store.revision
        async with store.watch("/l/", rev + 1) as events:
            clock.now += 2
            # Reads sweep before answering: the key is gone and a delete event was logged.
            assert await store.get("/l/a") is None
            event = await events.__anext__()
        assert (event.type, event.key, event.mod_revision) == ("delete", "/l/a", rev + 1)
        assert await store.sweep_expired() is False
    finally:
        await store.aclose()


@trio_test
async def test_one_process_owns_the_file(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db")
    try:
        with pytest.raises(StoreUnavailable):
            EmbeddedStore(tmp_path / "s.db", lock_timeout=0.1)
    finally:
        await store.aclose()
    with pytest.raises(StoreUnavailable):
        await store.get("/x")


@trio_test
async def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    embedded = open_store(from_dict({"head": {"state_dir": str(tmp_path)}}))
    assert isinstance(embedded, EmbeddedStore) and embedded.path == tmp_path / "store.sqlite3"
    await embedded.aclose()
    etcd = open_store(from_dict({"store": {"backend": "etcd", "etcd_endpoints": ["http://10.0.0.1:2379", "h2"]}}))
    assert isinstance(etcd, EtcdStore) and etcd.endpoints == [("10.0.0.1", 2379), ("h2", 2379)]
    await etcd.aclose()


@pytest.mark.etcd
@trio_test
async def test_etcd_down_is_store_unavailable(tmp_path: Path) -> None:
    with EtcdServer(tmp_path / "etcd") as server:
        store = EtcdStore([server.endpoint], timeout=1.0)
        try:
            rev = await store.put("/t/a", b"1")
            async with store.watch("/t/", rev + 1) as events:
                await trio.to_thread.run_sync(server.stop)
                with pytest.raises(StoreUnavailable), trio.fail_after(10):
                    await events.__anext__()
            with pytest.raises(StoreUnavailable), trio.fail_after(10):
                await store.get("/t/a")
            with pytest.raises(StoreUnavailable), trio.fail_after(10):
                await store.put("/t/a", b"2")
            # Back on the same port and data: the same client works again.
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(10):
                while True:
                    try:
                        kv = await store.get("/t/a")
                        break
                    except StoreUnavailable:
                        await trio.sleep(0.1)
            assert kv is not None and kv.value == b"1"
        finally:
            await store.aclose()
