"""The boot policy against the real object cache (EmbeddedStore + Objects + ObjectCache).

Checks the contract the policy codes to (node_by_mac, get, node_ip), that the
policy's per-node memo follows changes the cache sees (node IP, pool network),
and that an enrolled MAC is answered once the cache has it.
"""

from __future__ import annotations

from pathlib import Path

import trio

from cwboot.control.cache import ObjectCache
from cwboot.control.repo import Objects
from cwboot.control.store.embedded import EmbeddedStore
from cwboot.policy.dhcp import BootPolicy, Enrol, Reply
from cwboot.protocol.dhcp import parse_untrusted
from tests.protocol.dhcp_helpers import discover, pxe_options

MAC = "52:54:00:00:00:01"


def test_policy_follows_the_cache(tmp_path: Path) -> None:
    async def main() -> None:
        store = EmbeddedStore(tmp_path / "store.sqlite3")
        objs = Objects(store)
        cache = ObjectCache(store)
        policy = BootPolicy(head_address="10.1.0.1", http_port=8081, unknown_mac="enrol")
        request = parse_untrusted(discover(MAC, *pxe_options(7)))
        try:
            await objs.create(
                "naming_pool", {"name": "default", "network": "10.1.0.0/16", "ip_offset": 10}
            )
            await objs.create("node", {"index": 1, "mac": [MAC]})
            async with trio.open_nursery() as nursery:
                await nursery.start(cache.run)
                first = policy.decide(request, cache)
                assert isinstance(first, Reply) and first.yiaddr == bytes((10, 1, 0, 11))
                assert first.file == b"ipxe.efi" and (12, b"n1") in first.options

                await objs.update("node", "n1", {"ip": "10.1.7.7"})
                await cache.sync()
                second = policy.decide(request, cache)
                assert isinstance(second, Reply) and second.yiaddr == bytes((10, 1, 7, 7))

                await objs.update("node", "n1", {"ip": ""})
                await objs.update("naming_pool", "default", {"network": "10.2.0.0/16"})
                await cache.sync()
                third = policy.decide(request, cache)
                assert isinstance(third, Reply) and third.yiaddr == bytes((10, 2, 0, 11))

                new = "52:54:00:00:00:02"
                unknown = parse_untrusted(discover(new))
                assert policy.decide(unknown, cache) == Enrol(new)
                await objs.enrol(new, "default")
                await cache.sync()
                enrolled = policy.decide(unknown, cache)
                assert isinstance(enrolled, Reply) and enrolled.yiaddr != bytes(4)
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()

    trio.run(main)
