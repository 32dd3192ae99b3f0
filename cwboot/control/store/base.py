"""The store contract: an async (trio) revisioned key/value store with transactions, leases and watch.

Two backends implement it and pass the same contract tests
(tests/control/test_store_contract.py): ``EmbeddedStore`` (SQLite, single head,
the default) and ``EtcdStore`` (etcd v3 through the ``etcd3`` client in worker
threads). The object layer (cwboot.control.repo) builds objects, unique-name and
MAC index keys on top of ``txn``.

Revisions follow etcd's model: one store-wide counter, bumped by every
successful write transaction; each key remembers the revision of its last
change (``mod_revision``); ``mod_revision == 0`` in a compare means "the key
must not exist".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached (etcd down, database locked too long)."""


class RevisionMismatch(StoreError):
    """A compare-on-revision failed: someone else changed the key first."""


class LeaseExpired(StoreError):
    """The lease does not exist (never granted, revoked, or its TTL ran out)."""


class WatchCompacted(StoreError):
    """The watch's start revision is older than the store keeps; re-read everything."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch start revision was compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds when ``key``'s mod_revision equals ``mod_revision`` (0: key absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    # Lease id from grant_lease(); the key disappears when the lease expires.
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    key: str
    # None for deletes.
    value: bytes | None
    mod_revision: int


class Store(ABC):
    """Async key/value store. All methods are safe to call from concurrent trio tasks."""

    # Largest transaction the backend accepts: compares and ops are each limited
    # to max_txn_ops, and the encoded request (keys + values) to about
    # max_txn_bytes. Callers that write in bulk (Objects.create_many) chunk by them.
    max_txn_ops: int = 128
    max_txn_bytes: int = 1 << 20

    @abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    async def list_prefixes(self, prefixes: Sequence[str]) -> tuple[list[KeyValue], int]:
        """``list`` of several prefixes, all read at the same revision (returned)."""

    # Defined after every annotation that says list[...]: in a class body the method shadows the builtin.
    @abstractmethod
    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted) and the store revision the read saw."""

    @abstractmethod
    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> int | None:
        """Apply ``ops`` atomically if every compare holds: the new revision, or None if one failed."""

    @abstractmethod
    def watch(
        self, prefix: str, from_revision: int
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        """Events for keys under ``prefix`` from ``from_revision`` on, in revision order.

        ``from_revision <= 0`` means "from the next change on". The events of
        one revision are yielded back to back: the iterator only waits (hits a
        trio checkpoint) between revisions, so a consumer that applies events
        without awaiting never exposes half of a transaction.

        Raises WatchCompacted (on entering or while iterating) when
        ``from_revision`` is no longer available; the iterator may also end or
        raise StoreUnavailable when the connection is cut. Either way the caller
        re-reads with ``list`` and watches again from that revision + 1.
        """

    @abstractmethod
    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; keys put with it vanish (delete events) when it expires."""

    @abstractmethod
    async def refresh_lease(self, lease: int) -> None:
        """Restart the lease's TTL; LeaseExpired if it is gone."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """End the lease now, deleting its keys; a lease already gone is not an error."""

    @abstractmethod
    async def aclose(self) -> None: ...

    # Conveniences shared by every backend.

    async def put(self, key: str, value: bytes, if_revision: int | None = None, lease: int = 0) -> int:
        """Write ``key``; with ``if_revision`` only if its mod_revision still equals it."""
        compares = [] if if_revision is None else [Compare(key, if_revision)]
        rev = await self.txn(compares, [Put(key, value, lease)])
        if rev is None:
            raise RevisionMismatch(f"{key} changed since revision {if_revision}")
        return rev

    async def delete(self, key: str, if_revision: int | None = None) -> bool:
        """Remove ``key``; False if it did not exist."""
        current = await self.get(key)
        if current is None:
            return False
        compares = [Compare(key, current.mod_revision if if_revision is None else if_revision)]
        if await self.txn(compares, [Delete(key)]) is None:
            if if_revision is not None:
                raise RevisionMismatch(f"{key} changed since revision {if_revision}")
            return await self.delete(key)
        return True


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` ("" for the empty prefix: no end).

    Keys compare as UTF-8 bytes (etcd) or code points (SQLite's BINARY
    collation over UTF-8 text): both orders agree, so bumping the last
    character works for either backend.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return ""
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)
