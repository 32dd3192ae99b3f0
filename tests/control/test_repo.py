"""Objects (cwboot.control.repo) on both backends: names, index keys, bulk create, enrolment, status."""

from __future__ import annotations

import json

import pytest
import trio
from trio.testing import trio_test

from cwboot.control.objects import Conflict, InvalidObject, NotFound, node_ip
from cwboot.control.repo import INDEX_PREFIX, Objects, mac_key, name_key, object_key
from cwboot.control.store.base import Store
from tests.control.conftest import StoreFactory

MAC = "52:54:00:00:00:{:02x}"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


async def index_keys(store: Store) -> dict[str, str]:
    kvs, _ = await store.list(INDEX_PREFIX)
    return {kv.key: kv.value.decode() for kv in kvs}


async def expect(exc_type: type[Exception], coro: object, *words: str) -> None:
    with pytest.raises(exc_type) as info:
        await coro  # type: ignore[misc]
    for word in words:
        assert word in str(info.value)


@trio_test
async def test_node_names_come_from_the_pool(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store, Clock())
    try:
        node = await objs.create("node", {"index": 5, "mac": ["52-54-00-AA-BB-CC"]})
        assert node["name"] == "n5" and node["mac"] == ["52:54:00:aa:bb:cc"]
        # The 'default' pool was created with the kind's defaults on first use.
        pool = await objs.get("naming_pool", "default")
        assert pool["prefix"] == "n" and node_ip(node, pool) == "10.54.0.105"
        assert (await objs.create("node", {"name": "n12"}))["index"] == 12
        await expect(InvalidObject, objs.create("node", {"name": "n7", "index": 8}), "'n8'")
        await expect(InvalidObject, objs.create("node", {"name": "x7"}), "prefix")
        await expect(InvalidObject, objs.create("node", {"mac": [MAC.format(1)]}), "index")
        await expect(InvalidObject, objs.create("node", {"index": 1, "naming_pool": "rack9"}), "rack9", "naming_pool")
        await objs.create("naming_pool", {"name": "rack9", "prefix": "r9n", "network": "10.9.0.0/24", "ip_offset": 10})
        r = await objs.create("node", {"index": 3, "naming_pool": "rack9"})
        assert r["name"] == "r9n3" and node_ip(r, await objs.get("naming_pool", "rack9")) == "10.9.0.13"
    finally:
        await store.aclose()


@trio_test
async def test_duplicate_name_or_mac_is_a_conflict_naming_it(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        await objs.create("node", {"index": 1, "mac": [MAC.format(1)]})
        await expect(Conflict, objs.create("node", {"index": 1}), "'n1'")
        await expect(Conflict, objs.create("node", {"index": 2, "mac": [MAC.format(1)]}), MAC.format(1), "'n1'")
        await objs.create("boot_config", {"name": "compute"})
        await expect(Conflict, objs.create("boot_config", {"name": "compute"}), "'compute'")
        # Failed creates left no index keys behind.
        assert set(await index_keys(store)) == {
            name_key("node", "n1"),
            mac_key(MAC.format(1)),
            name_key("boot_config", "compute"),
            name_key("naming_pool", "default"),
        }
    finally:
        await store.aclose()


@trio_test
async def test_get_by_uid_or_name(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        bc = await objs.create("boot_config", {"name": "compute", "cmdline": "quiet"})
        assert await objs.get("boot_config", bc["uid"]) == bc
        assert await objs.get("boot_config", "compute") == bc
        await expect(NotFound, objs.get("boot_config", "nope"), "'nope'")
        await expect(NotFound, objs.get("gizmo", "x"), "unknown kind")
        await expect(NotFound, objs.get("boot_config", "../node/x"))
    finally:
        await store.aclose()


@trio_test
async def test_list_filters(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        for i in (10, 2, 1):
            await objs.create(
                "node",
                {
                    "index": i,
                    "mac": [MAC.format(i)],
                    "groups": ["all", "even" if i % 2 == 0 else "odd"],
                    "boot_config": "gpu" if i == 10 else "compute",
                    "attributes": {"rack": str(i // 10)},
                },
            )
        names = lambda docs: [d["name"] for d in docs]  # noqa: E731
        assert names(await objs.list("node")) == ["n1", "n2", "n10"]
        assert names(await objs.list("node", {"groups": "even"})) == ["n2", "n10"]
        assert names(await objs.list("node", {"boot_config": "compute"})) == ["n1", "n2"]
        assert names(await objs.list("node", {"name": "n1*"})) == ["n1", "n10"]
        assert names(await objs.list("node", {"attributes.rack": "1"})) == ["n10"]
        assert names(await objs.list("node", {"index": "2"})) == ["n2"]
        assert names(await objs.list("node", {"mac": MAC.format(2).upper()})) == ["n2"]
        assert names(await objs.list("node", {"groups": "odd", "index": "2"})) == []
        await expect(InvalidObject, objs.list("node", {"colour": "red"}), "colour")
        await expect(InvalidObject, objs.list("node", {"power_password": "x"}), "secret")
    finally:
        await store.aclose()


@trio_test
async def test_update_moves_index_keys_and_refreshes_last_modified(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store, Clock())
    try:
        node = await objs.create("node", {"index": 1, "mac": [MAC.format(1), MAC.format(2)]})
        await objs.create("node", {"index": 9, "mac": [MAC.format(9)]})
        moved = await objs.update("node", "n1", {"index": 4, "mac": [MAC.format(2), MAC.format(3)]})
        assert moved["name"] == "n4" and moved["uid"] == node["uid"]
        assert moved["last_modified"] > node["last_modified"]
        keys = await index_keys(store)
        assert name_key("node", "n1") not in keys and keys[name_key("node", "n4")] == node["uid"]
        assert mac_key(MAC.format(1)) not in keys
        assert keys[mac_key(MAC.format(3))] == node["uid"] == keys[mac_key(MAC.format(2))]
        # Renaming by name parses the index; taken names and MACs are conflicts that change nothing.
        assert (await objs.update("node", "n4", {"name": "n5"}))["index"] == 5
        await expect(Conflict, objs.update("node", "n5", {"index": 9}), "'n9'")
        await expect(Conflict, objs.update("node", "n5", {"mac": [MAC.format(9)]}), MAC.format(9), "'n9'")
        assert (await objs.get("node", "n5"))["mac"] == [MAC.format(2), MAC.format(3)]
        await expect(InvalidObject, objs.update("node", "n5", {"uid": "x"}), "uid")
        # A no-op patch writes nothing.
        before = await objs.get_with_revision("node", "n5")
        assert await objs.update("node", "n5", {"groups": []}) == before[0]
        assert (await objs.get_with_revision("node", "n5"))[1] == before[1]
    finally:
        await store.aclose()


@trio_test
async def test_update_optimistic_concurrency(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        await objs.create("boot_config", {"name": "bc"})
        _, rev = await objs.get_with_revision("boot_config", "bc")
        await objs.update("boot_config", "bc", {"cmdline": "a"}, if_revision=rev)
        await expect(Conflict, objs.update("boot_config", "bc", {"cmdline": "b"}, if_revision=rev), "changed")

        # Without if_revision, concurrent patches of different fields all land (internal retry).
        async def patch(field: str, value: str) -> None:
            await objs.update("boot_config", "bc", {field: value})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patch, "kernel", "vmlinuz")
            nursery.start_soon(patch, "initramfs", "initrd.img")
            nursery.start_soon(patch, "description", "gpu nodes")
        doc = await objs.get("boot_config", "bc")
        assert (doc["kernel"], doc["initramfs"], doc["description"], doc["cmdline"]) == (
            "vmlinuz",
            "initrd.img",
            "gpu nodes",
            "a",
        )
    finally:
        await store.aclose()


@trio_test
async def test_delete_frees_name_and_macs(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        node = await objs.create("node", {"index": 1, "mac": [MAC.format(1)]})
        await expect(Conflict, objs.delete("naming_pool", "default"), "used by 1 nodes")
        await expect(Conflict, objs.update("naming_pool", "default", {"prefix": "x"}), "used by 1 nodes")
        await objs.update("naming_pool", "default", {"ip_offset": 5})  # other fields may change
        await objs.delete("node", "n1")
        await expect(NotFound, objs.get("node", node["uid"]))
        assert set(await index_keys(store)) == {name_key("naming_pool", "default")}
        await objs.create("node", {"index": 1, "mac": [MAC.format(1)]})
        await objs.delete("node", "n1")
        await objs.delete("naming_pool", "default")
        await expect(NotFound, objs.delete("naming_pool", "default"))
    finally:
        await store.aclose()


@trio_test
async def test_create_many_batches_and_is_checked_up_front(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        docs = [{"index": i, "mac": [f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}"]} for i in range(600)]
        created = await objs.create_many("node", docs)
        assert [d["name"] for d in created[:3]] == ["n0", "n1", "n2"]
        kvs, _ = await store.list("/cwboot/v1/node/")
        assert len(kvs) == 600
        assert len(await index_keys(store)) == 600 * 2 + 1
        # Checked before anything is written: bad field, duplicate inside the batch.
        await expect(InvalidObject, objs.create_many("node", [{"index": 1000}, {"index": 1001, "mac": ["zz"]}]), "item 1")
        await expect(Conflict, objs.create_many("node", [{"index": 1000}, {"name": "n1000"}]), "twice")
        assert len((await store.list("/cwboot/v1/node/"))[0]) == 600
        # A clash with a stored node names it.
        await expect(Conflict, objs.create_many("node", [{"index": 1000}, {"index": 599}]), "'n599'")
        # In a large batch the culprit is found by reading the index, not key by key.
        big = [{"index": i} for i in range(2000, 2300)] + [{"index": 2300, "mac": ["02:00:00:00:00:05"]}]
        await expect(Conflict, objs.create_many("node", big), "02:00:00:00:00:05", "'n5'")
    finally:
        await store.aclose()


@trio_test
async def test_enrol_takes_the_next_index_and_is_idempotent(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        await objs.create("node", {"index": 1})  # created by hand: enrolment must skip n1
        a = await objs.enrol("52-54-00-00-00-0A", "default")
        b = await objs.enrol(MAC.format(11), "default")
        c = await objs.enrol(MAC.format(12), "default")
        assert (a["name"], b["name"], c["name"]) == ("n0", "n2", "n3")
        assert await objs.enrol(MAC.format(10), "default") == a
        assert (await objs.get("naming_pool", "default"))["next_index"] == 4
        await expect(InvalidObject, objs.enrol(MAC.format(13), "nope"), "nope")
        await expect(InvalidObject, objs.enrol("not-a-mac", "default"), "MAC")
    finally:
        await store.aclose()


@trio_test
async def test_concurrent_enrolment_from_two_heads_never_shares_an_index(make_store: StoreFactory) -> None:
    """Two heads (on etcd: two clients) enrol 2 x 25 MACs at once; plus both see the same 5 MACs."""
    stores = [make_store(), make_store()] if make_store.backend == "etcd" else [make_store()] * 2
    heads = [Objects(s) for s in stores]
    try:
        await heads[0].create("naming_pool", {"name": "dyn", "prefix": "d", "first_index": 100})
        results: list[dict[str, object]] = []

        async def enrol_all(head: Objects, macs: list[str]) -> None:
            for mac in macs:
                results.append(await head.enrol(mac, "dyn"))

        shared = [f"02:ff:00:00:00:{i:02x}" for i in range(5)]
        async with trio.open_nursery() as nursery:
            for h, head in enumerate(heads):
                own = [f"02:{h:02x}:00:00:01:{i:02x}" for i in range(25)]
                # Several tasks per head, so CAS races happen inside one head too.
                for part in range(5):
                    nursery.start_soon(enrol_all, head, own[part::5] + shared[part : part + 1])
        nodes = await heads[1].list("node")
        assert len(nodes) == 55
        assert sorted(n["index"] for n in nodes) == list(range(100, 155))
        assert (await heads[0].get("naming_pool", "dyn"))["next_index"] == 155
        # Both heads got the same node for each shared MAC.
        by_mac = {n["mac"][0]: n["uid"] for n in nodes}
        assert all(r["uid"] == by_mac[r["mac"][0]] for r in results)  # type: ignore[index]
    finally:
        for s in set(stores):
            await s.aclose()


@trio_test
async def test_put_status_merges_under_a_lease(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        node = await objs.create("node", {"index": 3, "mac": [MAC.format(3)]})
        s1 = await objs.put_status("n3", {"stage": "dhcp", "phases": {"dhcp": 1.0}}, ttl=60)
        assert s1["uid"] == node["uid"] and s1["name"] == "n3" and s1["mac"] == MAC.format(3)
        s2 = await objs.put_status(node["uid"], {"stage": "kernel", "phases": {"kernel": 2.0}}, ttl=60)
        assert s2["stage"] == "kernel" and s2["phases"] == {"dhcp": 1.0, "kernel": 2.0}
        assert await objs.get("status", "n3") == s2
        await expect(InvalidObject, objs.put_status("n3", {"colour": "red"}), "colour")
        await expect(NotFound, objs.put_status("n99", {"stage": "x"}))
        await expect(InvalidObject, objs.create("status", {"name": "n3"}), "put_status")
        raw = await store.get(object_key("status", node["uid"]))
        assert raw is not None and json.loads(raw.value)["stage"] == "kernel"
        # Deleting the node removes its status too.
        await objs.delete("node", "n3")
        assert await store.get(object_key("status", node["uid"])) is None
    finally:
        await store.aclose()


@trio_test
async def test_create_under_a_lease_vanishes_with_it(make_store: StoreFactory) -> None:
    store = make_store()
    objs = Objects(store)
    try:
        lease = await store.grant_lease(60)
        await objs.create("head", {"name": "head1", "api_url": "http://127.0.0.1:1"}, lease=lease)
        assert (await objs.get("head", "head1"))["api_url"] == "http://127.0.0.1:1"
        await store.revoke_lease(lease)
        await expect(NotFound, objs.get("head", "head1"))
        assert await index_keys(store) == {}
    finally:
        await store.aclose()
