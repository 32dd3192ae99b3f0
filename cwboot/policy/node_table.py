"""A fixed in-memory table of nodes with the lookup methods of the object cache.

``ObjectCache`` (cwboot.control.cache) is what a head uses; this table answers
the same three questions (``node_by_mac``, ``get``, ``node_ip``) for tests,
benchmarks and tools that have node documents but no store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cwboot.control.objects import node_ip, normalize_mac


class NodeTable:
    """Nodes and naming pools given up front; IPs derived once, like the cache does."""

    def __init__(
        self, nodes: Iterable[Mapping[str, Any]], pools: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self._objects: dict[str, dict[str, Mapping[str, Any]]] = {"node": {}, "naming_pool": {}}
        for pool in pools:
            self._objects["naming_pool"][pool["name"]] = pool
        self._by_mac: dict[str, Mapping[str, Any]] = {}
        self._ips: dict[str, str] = {}
        # Bumped on every change, like the cache's store revision (the DHCP fast path
        # re-checks its templates when it moves).
        self.revision = 0
        for node in nodes:
            self.add(node)

    def node_by_mac(self, mac: str) -> Mapping[str, Any] | None:
        return self._by_mac.get(mac)

    def macs(self) -> list[str]:
        return list(self._by_mac)

    def get(self, kind: str, ref: str) -> Mapping[str, Any] | None:
        return self._objects.get(kind, {}).get(ref)

    def node_ip(self, node: Mapping[str, Any]) -> str:
        return self._ips.get(node["name"], "")

    def add(self, node: Mapping[str, Any]) -> None:
        """Insert one more node (what an enrolment does to the cache)."""
        pool = self._objects["naming_pool"].get(node.get("naming_pool", "default"))
        self._objects["node"][node["name"]] = node
        self._ips[node["name"]] = node_ip(node, pool)
        for mac in node.get("mac", []):
            self._by_mac[normalize_mac(mac)] = node
        self.revision += 1
