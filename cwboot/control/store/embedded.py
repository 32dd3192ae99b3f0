"""EmbeddedStore: the Store contract on one SQLite file (single head, the default backend).

Threading: every SQLite call runs in a trio worker thread, one at a time
(a private ``CapacityLimiter(1)`` guards the single connection). A commit
waits for the disk and a 10,000-node bulk transaction takes a few hundred
milliseconds; neither may stall the trio loop that also answers DHCP.

Durability: WAL journal with ``synchronous=NORMAL`` — a committed
transaction survives a crash or restart of the process; a power cut may lose
the last few commits but never corrupts the file. The connection holds the
file exclusively (``locking_mode=EXCLUSIVE``): one head owns one store, and a
second process opening it gets StoreUnavailable instead of a split brain.

Tables:
    kv(key, value, mod_revision, lease)    current values
    events(revision, seq, key, value)      bounded change log (value NULL = delete)
    leases(id, ttl, expires)               wall-clock expiry, so it survives restarts
    meta(name, value)                      'revision' and 'compact_revision'

Watch replays ``events`` from the requested revision, then sleeps on a
``trio.Event`` that every commit of this process sets. The log keeps about
``max_events`` rows: older revisions are compacted away (a watch that starts
before them gets WatchCompacted, exactly like etcd after a compaction).

Lease expiry is checked before every operation (so no read ever sees an
expired key) and by waiting watchers at the next deadline (so delete events
arrive on time); ``sweep_expired()`` runs it explicitly.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from cwboot.control.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Put,
    Store,
    StoreError,
    StoreUnavailable,
    WatchCompacted,
    WatchEvent,
    prefix_end,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ttl INTEGER NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expires);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class EmbeddedStore(Store):
    """SQLite-backed Store.

    ``clock`` is wall time in seconds (lease expiry; injectable for tests);
    ``max_events`` bounds the change log; ``lock_timeout`` is how long to wait
    for a file another process holds before StoreUnavailable.
    """

    # Chunk bulk writes at this size so one transaction never holds the worker for long.
    max_txn_ops = 65536
    max_txn_bytes = 64 << 20

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        max_events: int = 200_000,
        lock_timeout: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.max_events = max_events
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opening is quick (no trio thread needed); only a file held by another process waits.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=lock_timeout)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact_revision', 0)")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        self.revision: int = meta["revision"]
        self.compact_revision: int = meta["compact_revision"]
        self._event_rows: int = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        self._next_expiry = self._query_next_expiry()
        self._limiter = trio.CapacityLimiter(1)
        # Set (and replaced) after every commit that changed the revision.
        self._changed = trio.Event()
        self._dirty = False
        self._closed = False

    # -- plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            return await trio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)
        finally:
            if self._dirty:
                self._dirty = False
                self._changed.set()
                self._changed = trio.Event()

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            if self._next_expiry is not None and self._next_expiry <= self.clock():
                self._sweep_sync()
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"{self.path}: {exc}") from None

    def _query_next_expiry(self) -> float | None:
        row = self._db.execute("SELECT min(expires) FROM leases").fetchone()
        expires: float | None = row[0]
        return expires

    def _begin_write(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _commit_write(self, revision: int, events: int) -> None:
        """Finish a write transaction that produced ``events`` events at ``revision``."""
        db = self._db
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        self._event_rows += events
        if self._event_rows > self.max_events * 5 // 4:
            self._trim_sync(revision)
        db.execute("COMMIT")
        self.revision = revision
        self._dirty = True

    def _trim_sync(self, newest: int) -> None:
        """Drop the oldest whole revisions so about max_events rows stay (inside the open txn).

        The newest revision always stays, however many events it has.
        """
        row = self._db.execute(
            "SELECT revision FROM events ORDER BY revision DESC, seq DESC LIMIT 1 OFFSET ?",
            (self.max_events,),
        ).fetchone()
        if row is not None:
            self._compact_sync(min(row[0] + 1, newest))

    def _compact_sync(self, revision: int) -> None:
        db = self._db
        if revision <= self.compact_revision:
            return
        db.execute("DELETE FROM events WHERE revision < ?", (revision,))
        db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))
        self._event_rows = db.execute("SELECT count(*) FROM events").fetchone()[0]
        self.compact_revision = revision

    def _delete_keys_sync(self, keys: Sequence[str], revision: int, seq: int) -> int:
        db = self._db
        for key in keys:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            db.execute("INSERT INTO events VALUES (?, ?, ?, NULL)", (revision, seq, key))
            seq += 1
        return seq

    def _sweep_sync(self) -> bool:
        """Revoke every expired lease (one revision for all of them); True if keys were deleted."""
        db = self._db
        now = self.clock()
        self._begin_write()
        try:
            expired = [r[0] for r in db.execute("SELECT id FROM leases WHERE expires <= ?", (now,))]
            keys: list[str] = []
            for lease in expired:
                keys += [r[0] for r in db.execute("SELECT key FROM kv WHERE lease = ?", (lease,))]
            db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
            self._next_expiry = self._query_next_expiry()
            if keys:
                revision = self.revision + 1
                self._delete_keys_sync(sorted(keys), revision, 0)
                self._commit_write(revision, len(keys))
            else:
                db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return bool(keys)

    # -- reads

    def _get_sync(self, key: str) -> KeyValue | None:
        row = self._db.execute("SELECT value, mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else KeyValue(key, row[0], row[1])

    def _range_sync(self, prefix: str) -> Iterator[KeyValue]:
        end = prefix_end(prefix)
        if end:
            rows = self._db.execute(
                "SELECT key, value, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, end),
            )
        else:
            rows = self._db.execute("SELECT key, value, mod_revision FROM kv ORDER BY key")
        return (KeyValue(k, v, r) for k, v, r in rows)

    def _list_sync(self, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        out: list[KeyValue] = []
        for prefix in prefixes:
            out.extend(self._range_sync(prefix))
        return out, self.revision

    async def get(self, key: str) -> KeyValue | None:
        return await self._run(self._get_sync, key)

    async def list_prefixes(self, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        return await self._run(self._list_sync, list(prefixes))

    # -- writes

    def _txn_sync(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        db = self._db
        self._begin_write()
        try:
            if not self._compares_hold_sync(compares):
                db.execute("COMMIT")
                return None
            revision = self.revision + 1
            seq = 0
            leases = {op.lease for op in ops if isinstance(op, Put) and op.lease}
            for lease in leases:
                row = db.execute("SELECT expires FROM leases WHERE id = ?", (lease,)).fetchone()
                if row is None or row[0] <= self.clock():
                    raise LeaseExpired(f"lease {lease:x} not found")
            puts = [op for op in ops if isinstance(op, Put)]
            if len(puts) == len(ops) and len({op.key for op in puts}) == len(puts):
                # The bulk case (create_many): two executemany calls instead of a loop.
                db.executemany(
                    "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
                    [(op.key, op.value, revision, op.lease) for op in puts],
                )
                db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?)",
                    [(revision, i, op.key, op.value) for i, op in enumerate(puts)],
                )
                seq = len(puts)
            for op in ops if seq == 0 else ():
                if isinstance(op, Put):
                    db.execute(
                        "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
                        (op.key, op.value, revision, op.lease),
                    )
                    db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (revision, seq, op.key, op.value))
                    seq += 1
                elif db.execute("SELECT 1 FROM kv WHERE key = ?", (op.key,)).fetchone():
                    seq = self._delete_keys_sync([op.key], revision, seq)
            if seq == 0:
                db.execute("COMMIT")  # nothing changed: like etcd, the revision stays
                return self.revision
            self._commit_write(revision, seq)
            return revision
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _compares_hold_sync(self, compares: Sequence[Compare]) -> bool:
        wanted = {c.key: c.mod_revision for c in compares}
        if len(wanted) != len(compares):
            # The same key compared twice: every compare must hold on its own.
            return all(self._compares_hold_sync([c]) for c in compares)
        keys = list(wanted)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            found = dict(
                self._db.execute(
                    f"SELECT key, mod_revision FROM kv WHERE key IN ({','.join('?' * len(chunk))})", chunk
                )
            )
            if any(found.get(key, 0) != wanted[key] for key in chunk):
                return False
        return True

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        return await self._run(self._txn_sync, list(compares), list(ops))

    async def compact(self, revision: int) -> None:
        """Forget the change log before ``revision`` (watches from older revisions get WatchCompacted)."""

        def compact_sync() -> None:
            if revision > self.revision + 1:
                raise StoreError(f"cannot compact to {revision}: the store is at {self.revision}")
            self._begin_write()
            self._compact_sync(revision)
            self._db.execute("COMMIT")

        await self._run(compact_sync)

    # -- leases

    def _grant_sync(self, ttl: int) -> int:
        expires = self.clock() + ttl
        cur = self._db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, expires))
        if self._next_expiry is None or expires < self._next_expiry:
            self._next_expiry = expires
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def grant_lease(self, ttl: int) -> int:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        return await self._run(self._grant_sync, ttl)

    def _refresh_sync(self, lease: int) -> None:
        cur = self._db.execute(
            "UPDATE leases SET expires = ? + ttl WHERE id = ? AND expires > ?",
            (self.clock(), lease, self.clock()),
        )
        if cur.rowcount == 0:
            raise LeaseExpired(f"lease {lease:x} not found")
        self._next_expiry = self._query_next_expiry()

    async def refresh_lease(self, lease: int) -> None:
        await self._run(self._refresh_sync, lease)

    def _revoke_sync(self, lease: int) -> None:
        db = self._db
        self._begin_write()
        try:
            keys = [r[0] for r in db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))]
            db.execute("DELETE FROM leases WHERE id = ?", (lease,))
            self._next_expiry = self._query_next_expiry()
            if keys:
                revision = self.revision + 1
                self._delete_keys_sync(keys, revision, 0)
                self._commit_write(revision, len(keys))
            else:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def revoke_lease(self, lease: int) -> None:
        await self._run(self._revoke_sync, lease)

    async def sweep_expired(self) -> bool:
        """Delete the keys of every expired lease now; True if any key went."""
        return await self._run(self._sweep_sync)

    # -- watch

    def _events_sync(self, prefix: str, from_revision: int) -> tuple[list[WatchEvent], int, int]:
        end = prefix_end(prefix) or "\U0010ffff"
        rows = self._db.execute(
            "SELECT revision, key, value FROM events WHERE revision >= ? AND key >= ? AND key < ?"
            " ORDER BY revision, seq",
            (from_revision, prefix, end),
        )
        events = [
            WatchEvent("put" if v is not None else "delete", k, v, r) for r, k, v in rows
        ]
        return events, self.compact_revision, self.revision

    @asynccontextmanager
    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        if from_revision <= 0:
            from_revision = self.revision + 1
        if from_revision < self.compact_revision:
            raise WatchCompacted(self.compact_revision)
        yield _EmbeddedWatch(self, prefix, from_revision)

    async def aclose(self) -> None:
        if self._closed:
            return
        await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)
        self._closed = True
        self._changed.set()

    # Last in the class: a method named list shadows the builtin in annotations below it.
    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._run(self._list_sync, [prefix])


class _EmbeddedWatch:
    """Iterator of one watch: replays the event log, then sleeps until the next commit."""

    def __init__(self, store: EmbeddedStore, prefix: str, next_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = next_revision
        self._buffer: deque[WatchEvent] = deque()

    def __aiter__(self) -> _EmbeddedWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._buffer:
            await self._fill()
        return self._buffer.popleft()

    async def _fill(self) -> None:
        store = self._store
        if store._closed:
            raise StopAsyncIteration
        changed = store._changed
        events, compact_revision, revision = await store._run(store._events_sync, self._prefix, self._next)
        if self._next < compact_revision:
            raise WatchCompacted(compact_revision)
        self._next = max(self._next, revision + 1)
        if events:
            self._buffer.extend(events)
            return
        expiry = store._next_expiry
        if expiry is None:
            await changed.wait()
            return
        delay = max(0.0, expiry - store.clock())
        with trio.move_on_after(delay if math.isfinite(delay) else math.inf):
            await changed.wait()
            return
        await store.sweep_expired()
