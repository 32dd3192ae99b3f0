"""In-memory cache of every object, indexed by uid, name and MAC, fed by the store's watch.

The data plane (DHCP, TFTP, HTTP) reads only this: lookups are plain dict
reads, never an await on the store. ``run()`` loads everything with one
consistent read (``list_prefixes`` of every kind) and then follows the watch
from that revision + 1; when the watch is cut (StoreUnavailable, end of
stream) or compacted (WatchCompacted) it re-reads everything and resumes the
same way, after a back-off that doubles from ``backoff_min`` to
``backoff_max`` while failures repeat.

A full read decodes the documents and builds the new indexes in a worker
thread, then swaps them in at once: lookups keep answering from the old
indexes meanwhile and never see a half-built state. Watch events are applied
without awaiting, and the store yields one revision's events back to back,
so a reader never sees half of a transaction either.

Documents handed out are the cache's own dicts: read them, never mutate them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from cwboot.control import objects
from cwboot.control.objects import KINDS
from cwboot.control.repo import PREFIX, kind_prefix, parse_object_key
from cwboot.control.store.base import KeyValue, Store, StoreError, WatchEvent


class _Indexes:
    """Every object of every kind: by uid and name per kind, nodes by MAC (text and 6 bytes)."""

    def __init__(self) -> None:
        self.by_uid: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.by_name: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.by_mac: dict[str, dict[str, Any]] = {}
        self.by_mac_bytes: dict[bytes, dict[str, Any]] = {}

    @classmethod
    def build(cls, kvs: Iterable[KeyValue]) -> _Indexes:
        indexes = cls()
        for kv in kvs:
            parsed = parse_object_key(kv.key)
            if parsed is not None and parsed[0] in KINDS:
                indexes.add(parsed[0], parsed[1], json.loads(kv.value))
        return indexes

    def add(self, kind: str, uid: str, doc: dict[str, Any]) -> None:
        self.by_uid[kind][uid] = doc
        name = doc.get("name")
        if name is not None:
            self.by_name[kind][name] = doc
        if kind == "node":
            for mac in doc.get("mac", ()):
                self.by_mac[mac] = doc
                self.by_mac_bytes[bytes.fromhex(mac.replace(":", ""))] = doc

    def remove(self, kind: str, uid: str) -> None:
        doc = self.by_uid[kind].pop(uid, None)
        if doc is None:
            return
        names = self.by_name[kind]
        name = doc.get("name", "")
        if names.get(name) is doc:
            del names[name]
        if kind == "node":
            for mac in doc.get("mac", ()):
                if self.by_mac.get(mac) is doc:
                    del self.by_mac[mac]
                raw = bytes.fromhex(mac.replace(":", ""))
                if self.by_mac_bytes.get(raw) is doc:
                    del self.by_mac_bytes[raw]


class ObjectCache:
    def __init__(self, store: Store, *, backoff_min: float = 0.05, backoff_max: float = 5.0) -> None:
        self.store = store
        # Store revision the cache reflects.
        self.revision = 0
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Full reads after the first one (each follows a cut or compacted watch).
        self.resyncs = 0
        self.events_applied = 0
        self.last_error = ""
        self._indexes = _Indexes()
        self._progress = trio.Event()
        self._waiting = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load everything, report started, then follow the watch forever."""
        started = False
        backoff = self.backoff_min
        while True:
            applied_before = self.events_applied
            try:
                await self._load()
                if not started:
                    task_status.started()
                    started = True
                else:
                    self.resyncs += 1
                await self._follow()
                self.last_error = "the watch ended"
            except StoreError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self.events_applied != applied_before:
                backoff = self.backoff_min  # the watch worked for a while: this is a fresh failure
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def _load(self) -> None:
        kvs, revision = await self.store.list_prefixes([kind_prefix(kind) for kind in KINDS])
        self._indexes = await trio.to_thread.run_sync(_Indexes.build, kvs)
        self.revision = revision
        self._notify()

    async def _follow(self) -> None:
        async with self.store.watch(PREFIX, self.revision + 1) as events:
            async for event in events:
                self._apply(event)

    def _apply(self, event: WatchEvent) -> None:
        if event.mod_revision < self.revision:
            return
        parsed = parse_object_key(event.key)
        if parsed is not None and parsed[0] in KINDS:
            kind, uid = parsed
            self._indexes.remove(kind, uid)
            if event.type == "put" and event.value is not None:
                self._indexes.add(kind, uid, json.loads(event.value))
            self.events_applied += 1
        self.revision = event.mod_revision
        if self._waiting:
            self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_for_revision(self, revision: int, timeout: float = math.inf) -> None:
        """Return once the cache reflects ``revision`` (e.g. one a write returned); TooSlowError after ``timeout``."""
        with trio.fail_after(timeout):
            while self.revision < revision:
                self._waiting += 1
                try:
                    await self._progress.wait()
                finally:
                    self._waiting -= 1

    async def sync(self, timeout: float = 10.0) -> None:
        """Wait until the cache reflects every write the store has committed so far."""
        # An empty range still reports the revision the store is at.
        _, revision = await self.store.list(PREFIX + "\0")
        await self.wait_for_revision(revision, timeout)

    # -- lookups (plain dict reads)

    def get(self, kind: str, ref: str) -> dict[str, Any] | None:
        """By uid or name."""
        uids = self._indexes.by_uid.get(kind)
        if uids is None:
            return None
        return uids.get(ref) or self._indexes.by_name[kind].get(ref)

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind``, in no particular order."""
        return list(self._indexes.by_uid.get(kind, {}).values())

    def count(self, kind: str) -> int:
        return len(self._indexes.by_uid.get(kind, ()))

    def node_by_mac(self, mac: str) -> dict[str, Any] | None:
        """``mac`` normalized as aa:bb:cc:dd:ee:ff."""
        return self._indexes.by_mac.get(mac)

    def macs(self) -> list[str]:
        """Every node MAC (normalized); the DHCP service compiles answers for them when idle."""
        return list(self._indexes.by_mac)

    def node_by_hwaddr(self, hwaddr: bytes) -> dict[str, Any] | None:
        """By the 6 raw bytes of a DHCP chaddr: no formatting on the hot path."""
        return self._indexes.by_mac_bytes.get(hwaddr)

    def node_ip(self, node: Mapping[str, Any]) -> str:
        """Explicit ip, else derived from its naming pool (cwboot.control.objects.node_ip)."""
        return objects.node_ip(node, self.get("naming_pool", node.get("naming_pool", "default")))
