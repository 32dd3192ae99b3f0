"""The key/value store behind cwboot's objects: the contract (base) and its two backends.

``open_store(config)`` picks the backend from ``store.backend``:
``embedded`` (SQLite file at ``config.store_path``) or ``etcd``
(``store.etcd_endpoints``).
"""

from __future__ import annotations

from cwboot.config import Config
from cwboot.control.store.base import (
    Compare,
    Delete,
    KeyValue,
    LeaseExpired,
    Put,
    RevisionMismatch,
    Store,
    StoreError,
    StoreUnavailable,
    WatchCompacted,
    WatchEvent,
)


def open_store(config: Config) -> Store:
    """A Store for ``config``; the caller closes it with ``await store.aclose()``."""
    if config.store.backend == "etcd":
        from cwboot.control.store.etcd import EtcdStore

        return EtcdStore(config.store.etcd_endpoints)
    from cwboot.control.store.embedded import EmbeddedStore

    return EmbeddedStore(config.store_path)


__all__ = [
    "Compare",
    "Delete",
    "KeyValue",
    "LeaseExpired",
    "Put",
    "RevisionMismatch",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WatchCompacted",
    "WatchEvent",
    "open_store",
]
