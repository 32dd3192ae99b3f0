"""In-memory cache of every object, indexed by uid, name and MAC, fed by the store's watch.

The data plane (DHCP, TFTP, HTTP) reads only this: lookups are plain dict
reads, never an await on the store. ``run()`` loads everything with one
``list`` and then follows the watch from that revision + 1; when the watch is
cut or compacted it re-reads everything and resumes the same way.

TO BE IMPLEMENTED by the store work; the methods below are the contract.
"""

from __future__ import annotations

from typing import Any

import trio

from cwboot.control.store.base import Store


class ObjectCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Store revision the cache reflects.
        self.revision = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load everything, report started, then follow the watch forever."""
        raise NotImplementedError

    def get(self, kind: str, ref: str) -> dict[str, Any] | None:
        """By uid or name."""
        raise NotImplementedError

    def all(self, kind: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def node_by_mac(self, mac: str) -> dict[str, Any] | None:
        """``mac`` normalized as aa:bb:cc:dd:ee:ff."""
        raise NotImplementedError

    def node_ip(self, node: dict[str, Any]) -> str:
        """Explicit ip, else derived from its naming pool (cwboot.control.objects.node_ip)."""
        raise NotImplementedError
