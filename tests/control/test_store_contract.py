"""The Store contract, run against both backends: SQLite and a real etcd server."""

from __future__ import annotations

import trio
from trio.testing import trio_test

from cwboot.control.store.base import (
    Compare,
    Delete,
    LeaseExpired,
    Put,
    RevisionMismatch,
    Store,
    WatchCompacted,
    WatchEvent,
)
from tests.control.conftest import StoreFactory


async def collect(events: object, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    with trio.fail_after(timeout):
        async for event in events:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) == n:
                break
    return out


@trio_test
async def test_put_get_and_revisions(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        assert await store.get("/t/a") is None
        r1 = await store.put("/t/a", b"1")
        r2 = await store.put("/t/a", b"2")
        assert r2 > r1
        kv = await store.get("/t/a")
        assert kv is not None and kv.value == b"2" and kv.mod_revision == r2
    finally:
        await store.aclose()


@trio_test
async def test_txn_compares_all_or_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        # mod_revision 0 == "absent".
        rev = await store.txn([Compare("/t/a", 0)], [Put("/t/a", b"a"), Put("/t/b", b"b")])
        assert rev is not None
        assert (await store.get("/t/b")).mod_revision == rev  # type: ignore[union-attr]
        # One failing compare: nothing of the txn is written.
        failed = await store.txn([Compare("/t/a", rev), Compare("/t/b", 0)], [Put("/t/c", b"c")])
        assert failed is None
        assert await store.get("/t/c") is None
        # Matching mod_revisions: applied, and deletes go in the same revision.
        rev2 = await store.txn([Compare("/t/a", rev), Compare("/t/b", rev)], [Delete("/t/a"), Put("/t/c", b"c")])
        assert rev2 is not None and rev2 > rev
        assert await store.get("/t/a") is None
        assert (await store.get("/t/c")).mod_revision == rev2  # type: ignore[union-attr]
    finally:
        await store.aclose()


@trio_test
async def test_put_if_revision_and_delete(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        rev = await store.put("/t/k", b"v")
        try:
            await store.put("/t/k", b"w", if_revision=rev - 1)
        except RevisionMismatch:
            pass
        else:
            raise AssertionError("a stale if_revision was accepted")
        rev2 = await store.put("/t/k", b"w", if_revision=rev)
        try:
            await store.delete("/t/k", if_revision=rev)
        except RevisionMismatch:
            pass
        else:
            raise AssertionError("a stale delete was accepted")
        assert await store.delete("/t/k", if_revision=rev2) is True
        assert await store.delete("/t/k") is False
    finally:
        await store.aclose()


@trio_test
async def test_list_is_sorted_prefix_bounded_and_reports_revision(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        for key in ["/t/b", "/t/a", "/t/c/x", "/u/a", "/t"]:
            last = await store.put(key, key.encode())
        kvs, rev = await store.list("/t/")
        assert [kv.key for kv in kvs] == ["/t/a", "/t/b", "/t/c/x"]
        assert rev == last
        both, rev2 = await store.list_prefixes(["/u/", "/t/c/"])
        assert [kv.key for kv in both] == ["/u/a", "/t/c/x"] and rev2 == last
        assert (await store.list("/nothing/"))[0] == []
    finally:
        await store.aclose()


@trio_test
async def test_list_pages_through_many_keys(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        keys = [f"/t/{i:05d}" for i in range(1200)]
        for start in range(0, len(keys), 100):
            await store.txn([], [Put(k, b"x" * 50) for k in keys[start : start + 100]])
        if hasattr(store, "page_size"):
            store.page_size = 500  # type: ignore[attr-defined]
        kvs, _ = await store.list("/t/")
        assert [kv.key for kv in kvs] == keys
    finally:
        await store.aclose()


@trio_test
async def test_watch_replays_then_follows_in_revision_order(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        r1 = await store.put("/t/a", b"1")
        await store.put("/other", b"x")
        r2 = await store.txn([], [Put("/t/b", b"2"), Put("/t/c", b"3")])
        async with store.watch("/t/", r1) as events:
            replay = await collect(events, 3)
            assert [(e.type, e.key, e.value, e.mod_revision) for e in replay] == [
                ("put", "/t/a", b"1", r1),
                ("put", "/t/b", b"2", r2),
                ("put", "/t/c", b"3", r2),
            ]
            r3 = await store.txn([], [Delete("/t/a"), Put("/t/d", b"4")])
            await store.put("/other", b"y")
            r4 = await store.put("/t/b", b"5")
            live = await collect(events, 3)
            assert [(e.type, e.key, e.value, e.mod_revision) for e in live] == [
                ("delete", "/t/a", None, r3),
                ("put", "/t/d", b"4", r3),
                ("put", "/t/b", b"5", r4),
            ]
    finally:
        await store.aclose()


@trio_test
async def test_watch_from_zero_starts_at_the_next_change(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        await store.put("/t/old", b"1")
        async with store.watch("/t/", 0) as events:
            rev = await store.put("/t/new", b"2")
            (event,) = await collect(events, 1)
            assert (event.key, event.mod_revision) == ("/t/new", rev)
    finally:
        await store.aclose()


@trio_test
async def test_watch_before_compaction_raises_watch_compacted(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        r1 = await store.put("/t/a", b"1")
        await store.put("/t/a", b"2")
        r3 = await store.put("/t/a", b"3")
        await store.compact(r3)  # type: ignore[attr-defined]
        try:
            async with store.watch("/t/", r1) as events:
                await collect(events, 1)
        except WatchCompacted as exc:
            assert exc.compact_revision == r3
        else:
            raise AssertionError("watching a compacted revision did not raise WatchCompacted")
        # From the compaction revision on, history is still there.
        async with store.watch("/t/", r3) as events:
            (event,) = await collect(events, 1)
            assert event.value == b"3"
    finally:
        await store.aclose()


@trio_test
async def test_lease_revoke_deletes_keys_with_events(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        lease = await store.grant_lease(30)
        rev = await store.txn([], [Put("/t/a", b"1", lease), Put("/t/b", b"2", lease), Put("/t/c", b"3")])
        assert rev is not None
        await store.refresh_lease(lease)
        async with store.watch("/t/", rev + 1) as events:
            await store.revoke_lease(lease)
            gone = await collect(events, 2)
        assert sorted((e.type, e.key) for e in gone) == [("delete", "/t/a"), ("delete", "/t/b")]
        assert await store.get("/t/a") is None and await store.get("/t/c") is not None
        try:
            await store.refresh_lease(lease)
        except LeaseExpired:
            pass
        else:
            raise AssertionError("refreshing a revoked lease succeeded")
        try:
            await store.put("/t/d", b"4", lease=lease)
        except LeaseExpired:
            pass
        else:
            raise AssertionError("a put with a revoked lease succeeded")
        await store.revoke_lease(lease)  # already gone: not an error
    finally:
        await store.aclose()


@trio_test
async def test_lease_expiry_deletes_keys_with_events(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        lease = await store.grant_lease(1)
        rev = await store.put("/t/ephemeral", b"x", lease=lease)
        async with store.watch("/t/", rev + 1) as events:
            (event,) = await collect(events, 1, timeout=15)
        assert (event.type, event.key) == ("delete", "/t/ephemeral")
        assert await store.get("/t/ephemeral") is None
    finally:
        await store.aclose()


@trio_test
async def test_compare_and_swap_under_contention(make_store: StoreFactory) -> None:
    """Concurrent tasks (on etcd: two clients, i.e. two heads) increment one counter with CAS."""
    stores = [make_store(), make_store()] if make_store.backend == "etcd" else [make_store()]
    try:
        await stores[0].put("/t/counter", b"0")

        async def increment(store: Store, times: int) -> None:
            for _ in range(times):
                while True:
                    kv = await store.get("/t/counter")
                    assert kv is not None
                    new = str(int(kv.value) + 1).encode()
                    if await store.txn([Compare(kv.key, kv.mod_revision)], [Put(kv.key, new)]) is not None:
                        break

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(increment, stores[i % len(stores)], 10)
        kv = await stores[0].get("/t/counter")
        assert kv is not None and kv.value == b"60"
    finally:
        for store in stores:
            await store.aclose()


@trio_test
async def test_largest_allowed_transaction_goes_through(make_store: StoreFactory) -> None:
    store = make_store()
    try:
        n = min(store.max_txn_ops, 2000)
        keys = [f"/t/{i:05d}" for i in range(n)]
        rev = await store.txn([Compare(k, 0) for k in keys], [Put(k, b"v") for k in keys])
        assert rev is not None
        kvs, _ = await store.list("/t/")
        assert len(kvs) == n and {kv.mod_revision for kv in kvs} == {rev}
    finally:
        await store.aclose()


@trio_test
async def test_watch_catches_up_on_a_large_backlog(make_store: StoreFactory) -> None:
    """~6 MB of history replayed at once (more than gRPC's default 4 MiB message)."""
    store = make_store()
    try:
        value = b"v" * 1200
        first = None
        for t in range(50):
            rev = await store.txn([], [Put(f"/t/{t:02d}/{i:03d}", value) for i in range(100)])
            first = first or rev
        assert first is not None
        async with store.watch("/t/", first) as events:
            replay = await collect(events, 5000, timeout=30)
        assert len({e.key for e in replay}) == 5000 and replay[-1].mod_revision == rev
    finally:
        await store.aclose()
