"""The object layer: kinds of JSON objects on top of the key/value Store.

Key layout (one source of truth; the cache and both backends use it):

    /cwboot/v1/<kind>/<uid>                    -> JSON document
    /cwboot/v1/index/<kind>/name/<name>        -> uid   (unique names)
    /cwboot/v1/index/node/mac/<mac>            -> uid   (unique MACs)

Every create/update/delete writes the object and its index keys in one
transaction with compares, so two heads can never create the same name or MAC.
Enrolment of an unknown MAC advances the naming pool's ``next_index`` with a
compare-and-swap, so two heads never hand out the same index.

Choices made here:

- Node names are the naming pool's prefix + index (``n0``, ``n1``...). A new
  node gives ``index`` (its name is derived; a ``name`` that disagrees is
  refused) or a ``name`` of the form prefix + digits (the index is parsed
  from it). Without either it must be enrolled (``enrol``).
- A node may name the pool ``default`` before it exists: the pool is then
  created with the kind's defaults (prefix ``n``, 10.54.0.0/16, offset 100).
  Any other missing pool is an InvalidObject naming the field.
- References between objects (``boot_config``, ``image``) are not checked:
  a boot config may be created after the nodes that use it. A naming pool
  still used by nodes cannot be deleted, renamed or given another prefix.
- Creating nodes with explicit indexes does not move the pool's
  ``next_index``; enrolment skips indexes whose names are taken.
- ``create_many`` writes in transactions as large as the backend takes
  (etcd: 128 ops, so ~40 single-MAC nodes per transaction, 4 in flight):
  all-or-nothing per transaction. The whole batch is validated first, so a
  bad field or a duplicate inside the batch writes nothing; a clash with a
  stored object can leave earlier transactions written (the Conflict says
  how many).
- ``update`` retries a lost compare-on-revision by re-applying the patch to the
  fresh document (a PATCH is a function of the current state); with
  ``if_revision`` it raises Conflict instead.
- Status objects (kind ``status``) share their node's uid, carry no name
  index (``get("status", node_name)`` resolves through the node) and live
  under a lease: ``put_status`` merges fields into the current status and
  re-arms the TTL.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from cwboot.control.objects import (
    Conflict,
    InvalidObject,
    NotFound,
    fields_of,
    normalize_mac,
    validate_new,
    validate_patch,
)
from cwboot.control.store.base import Compare, Delete, KeyValue, Put, Store

PREFIX = "/cwboot/v1/"
INDEX_PREFIX = PREFIX + "index/"
# Concurrent transactions of one create_many (etcd pipelines them; SQLite runs them in turn).
_BULK_PARALLEL = 4
_RETRIES = 16


def object_key(kind: str, uid: str) -> str:
    return f"{PREFIX}{kind}/{uid}"


def kind_prefix(kind: str) -> str:
    return f"{PREFIX}{kind}/"


def name_key(kind: str, name: str) -> str:
    return f"{INDEX_PREFIX}{kind}/name/{name}"


def mac_key(mac: str) -> str:
    return f"{INDEX_PREFIX}node/mac/{mac}"


def parse_object_key(key: str) -> tuple[str, str] | None:
    """``/cwboot/v1/<kind>/<uid>`` -> (kind, uid); None for index keys and anything else."""
    if not key.startswith(PREFIX) or key.startswith(INDEX_PREFIX):
        return None
    kind, sep, uid = key[len(PREFIX) :].partition("/")
    if not sep or not uid or "/" in uid:
        return None
    return kind, uid


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _indexed(kind: str) -> bool:
    return kind != "status"


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key that puts n2 before n10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


class Objects:
    """CRUD for every kind. Raises cwboot.control.objects.{InvalidObject,NotFound,Conflict}.

    ``clock`` returns wall time in seconds (``last_modified``); injectable for tests.
    Documents returned are fresh dicts the caller may keep; they include secrets
    (API/CLI callers pass them through ``objects.redact``).
    """

    def __init__(self, store: Store, clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.clock = clock or time.time

    # -- reads

    async def _find(self, kind: str, ref: str) -> KeyValue | None:
        fields_of(kind)  # NotFound for an unknown kind
        if not isinstance(ref, str) or not ref or "/" in ref:
            return None
        kv = await self.store.get(object_key(kind, ref))
        if kv is not None:
            return kv
        owner = kind if _indexed(kind) else "node"
        index = await self.store.get(name_key(owner, ref))
        if index is None:
            return None
        return await self.store.get(object_key(kind, index.value.decode()))

    async def _load(self, kind: str, ref: str) -> tuple[KeyValue, dict[str, Any]]:
        kv = await self._find(kind, ref)
        if kv is None:
            raise NotFound(f"{kind} {ref!r} not found")
        return kv, json.loads(kv.value)

    async def get(self, kind: str, ref: str) -> dict[str, Any]:
        """By uid or name; NotFound otherwise. Secrets included (callers redact)."""
        return (await self._load(kind, ref))[1]

    async def get_with_revision(self, kind: str, ref: str) -> tuple[dict[str, Any], int]:
        """The document and its mod_revision (for ``update(..., if_revision=)``)."""
        kv, doc = await self._load(kind, ref)
        return doc, kv.mod_revision

    # -- naming pools and node names

    async def _pool(self, name: str) -> dict[str, Any]:
        kv = await self._find("naming_pool", name)
        if kv is not None:
            pool: dict[str, Any] = json.loads(kv.value)
            return pool
        if name != "default":
            raise InvalidObject(f"field 'naming_pool': naming pool {name!r} does not exist")
        try:
            return await self.create("naming_pool", {"name": "default"})
        except Conflict:
            return await self.get("naming_pool", "default")

    @staticmethod
    def _name_node(doc: dict[str, Any], pool: Mapping[str, Any], *, name_given: bool, index_given: bool) -> None:
        """Set the node's name and index from the pool prefix and whichever of them the client gave."""
        prefix = pool["prefix"]
        if name_given and not index_given:
            m = re.fullmatch(re.escape(prefix) + r"(0|[1-9][0-9]*)", doc["name"])
            if m is None:
                raise InvalidObject(
                    f"field 'name': {doc['name']!r} is not a name of naming pool {pool['name']!r}"
                    f" (expected the pool prefix {prefix!r} followed by an index)"
                )
            doc["index"] = fields_of("node")["index"].check("index", int(m.group(1)))
            return
        if "index" not in doc:
            raise InvalidObject("field 'index' is required (or give a name like n12, or enrol the node)")
        derived = f"{prefix}{doc['index']}"
        if name_given and doc["name"] != derived:
            raise InvalidObject(
                f"field 'name': node names come from the naming pool: expected {derived!r} for index {doc['index']}"
            )
        doc["name"] = derived

    # -- writes

    @staticmethod
    def _create_txn(kind: str, doc: Mapping[str, Any], lease: int = 0) -> tuple[list[Compare], list[Put]]:
        uid = doc["uid"]
        compares: list[Compare] = []
        ops = [Put(object_key(kind, uid), encode(doc), lease)]
        if _indexed(kind):
            compares.append(Compare(name_key(kind, doc["name"]), 0))
            ops.append(Put(name_key(kind, doc["name"]), uid.encode(), lease))
        for mac in doc.get("mac", []) if kind == "node" else []:
            compares.append(Compare(mac_key(mac), 0))
            ops.append(Put(mac_key(mac), uid.encode(), lease))
        return compares, ops

    async def _conflict(self, kind: str, docs: Sequence[Mapping[str, Any]]) -> Conflict | None:
        """Which name or MAC of ``docs`` is now taken by another object (None if none is)."""
        wanted: dict[str, tuple[str, str]] = {}
        for doc in docs:
            if _indexed(kind):
                wanted[name_key(kind, doc["name"])] = ("name", doc["name"])
            for mac in doc.get("mac", []) if kind == "node" else []:
                wanted[mac_key(mac)] = ("mac", mac)
        uids = {doc["uid"] for doc in docs}
        if len(wanted) <= 256:  # else one read of the index beats hundreds of gets
            found = [kv for kv in [await self.store.get(key) for key in wanted] if kv is not None]
        else:
            prefixes = [f"{INDEX_PREFIX}{kind}/name/"] + ([mac_key("")] if kind == "node" else [])
            found = [kv for kv in (await self.store.list_prefixes(prefixes))[0] if kv.key in wanted]
        for kv in found:
            owner = kv.value.decode()
            if owner in uids:
                continue
            what, value = wanted[kv.key]
            if what == "name":
                return Conflict(f"{kind} name {value!r} is already taken")
            other = await self.store.get(object_key("node", owner))
            other_name = json.loads(other.value).get("name", owner) if other else owner
            return Conflict(f"MAC {value} already belongs to node {other_name!r}")
        return None

    async def create(self, kind: str, doc: Mapping[str, Any], *, lease: int = 0) -> dict[str, Any]:
        """Validate, assign uid/last_modified (nodes: name from pool+index), write with index keys.

        ``lease`` (from ``store.grant_lease``) makes the object vanish with the lease
        (head registrations).
        """
        if kind == "status":
            raise InvalidObject("status objects are reported with put_status")
        new = validate_new(kind, doc, self.clock())
        if kind == "node":
            self._name_node(
                new, await self._pool(new["naming_pool"]), name_given="name" in doc, index_given="index" in doc
            )
        compares, ops = self._create_txn(kind, new, lease)
        for _ in range(_RETRIES):
            if await self.store.txn(compares, ops) is not None:
                return new
            conflict = await self._conflict(kind, [new])
            if conflict is not None:
                raise conflict
        raise Conflict(f"could not create {kind} {new['name']!r}: the store kept changing")

    async def create_many(self, kind: str, docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Bulk create in batched transactions (10,000 nodes must be fast); all-or-nothing per batch."""
        if kind == "status":
            raise InvalidObject("status objects are reported with put_status")
        now = self.clock()
        pools: dict[str, dict[str, Any]] = {}
        created: list[dict[str, Any]] = []
        names: set[str] = set()
        macs: set[str] = set()
        for i, doc in enumerate(docs):
            try:
                new = validate_new(kind, doc, now)
                if kind == "node":
                    pool_name = new["naming_pool"]
                    if pool_name not in pools:
                        pools[pool_name] = await self._pool(pool_name)
                    self._name_node(new, pools[pool_name], name_given="name" in doc, index_given="index" in doc)
            except InvalidObject as exc:
                raise InvalidObject(f"item {i}: {exc}") from None
            if new["name"] in names:
                raise Conflict(f"item {i}: {kind} name {new['name']!r} appears twice in the batch")
            names.add(new["name"])
            for mac in new.get("mac", []) if kind == "node" else []:
                if mac in macs:
                    raise Conflict(f"item {i}: MAC {mac} appears twice in the batch")
                macs.add(mac)
            created.append(new)

        batches = list(self._batches(kind, created))
        failures: list[Exception] = []
        written = 0
        limit = trio.Semaphore(_BULK_PARALLEL)

        async def write(batch: tuple[list[Compare], list[Put], list[dict[str, Any]]]) -> None:
            nonlocal written
            compares, ops, members = batch
            async with limit:
                if failures:
                    return
                try:
                    for _ in range(_RETRIES):
                        if await self.store.txn(compares, ops) is not None:
                            written += len(members)
                            return
                        conflict = await self._conflict(kind, members)
                        if conflict is not None:
                            raise conflict
                    raise Conflict(f"could not create {kind} objects: the store kept changing")
                except Exception as exc:
                    failures.append(exc)

        async with trio.open_nursery() as nursery:
            for batch in batches:
                nursery.start_soon(write, batch)
        if failures:
            first = failures[0]
            if isinstance(first, Conflict) and written:
                raise Conflict(f"{first}; {written} of {len(created)} objects were written by other transactions")
            raise first
        return created

    def _batches(
        self, kind: str, docs: Iterable[dict[str, Any]]
    ) -> Iterable[tuple[list[Compare], list[Put], list[dict[str, Any]]]]:
        """Pack documents into transactions within the backend's op and byte limits."""
        max_ops, max_bytes = self.store.max_txn_ops, self.store.max_txn_bytes
        compares: list[Compare] = []
        ops: list[Put] = []
        members: list[dict[str, Any]] = []
        size = 0
        for doc in docs:
            c, o = self._create_txn(kind, doc)
            n = sum(len(p.key) + len(p.value) + 16 for p in o) + sum(len(x.key) + 16 for x in c)
            if members and (
                len(compares) + len(c) > max_ops or len(ops) + len(o) > max_ops or size + n > max_bytes
            ):
                yield compares, ops, members
                compares, ops, members, size = [], [], [], 0
            compares += c
            ops += o
            members.append(doc)
            size += n
        if members:
            yield compares, ops, members

    async def update(
        self, kind: str, ref: str, patch: Mapping[str, Any], *, if_revision: int | None = None
    ) -> dict[str, Any]:
        """Apply a partial update; index keys move in the same transaction when name/MAC change.

        With ``if_revision`` the update applies only to that revision of the
        object (Conflict otherwise); without it a concurrent change is retried.
        """
        if kind == "status":
            raise InvalidObject("status objects are reported with put_status")
        for _ in range(_RETRIES):
            kv, current = await self._load(kind, ref)
            if if_revision is not None and kv.mod_revision != if_revision:
                raise Conflict(f"{kind} {ref!r} changed since revision {if_revision} (now {kv.mod_revision})")
            new = validate_patch(kind, current, patch, self.clock())
            if kind == "node" and any(k in patch for k in ("name", "index", "naming_pool")):
                self._name_node(
                    new, await self._pool(new["naming_pool"]), name_given="name" in patch, index_given="index" in patch
                )
            if new == current:
                return current
            if kind == "naming_pool" and (new["prefix"], new["name"]) != (current["prefix"], current["name"]):
                users = await self.list("node", {"naming_pool": current["name"]})
                if users:
                    raise Conflict(
                        f"naming pool {current['name']!r} is used by {len(users)} nodes:"
                        " its name and prefix cannot change (their names derive from them)"
                    )
            if new["last_modified"] == current["last_modified"]:  # only the derived name changed
                new["last_modified"] = self.clock()
            uid = current["uid"]
            compares = [Compare(kv.key, kv.mod_revision)]
            ops: list[Put | Delete] = [Put(kv.key, encode(new))]
            if new["name"] != current["name"]:
                compares.append(Compare(name_key(kind, new["name"]), 0))
                ops += [Delete(name_key(kind, current["name"])), Put(name_key(kind, new["name"]), uid.encode())]
            if kind == "node":
                old_macs, new_macs = set(current.get("mac", [])), set(new.get("mac", []))
                ops += [Delete(mac_key(m)) for m in sorted(old_macs - new_macs)]
                for mac in sorted(new_macs - old_macs):
                    compares.append(Compare(mac_key(mac), 0))
                    ops.append(Put(mac_key(mac), uid.encode()))
            if await self.store.txn(compares, ops) is not None:
                return new
            if if_revision is not None:
                raise Conflict(f"{kind} {ref!r} changed since revision {if_revision}")
            conflict = await self._conflict(kind, [new])
            if conflict is not None:
                raise conflict
        raise Conflict(f"could not update {kind} {ref!r}: it kept changing")

    async def delete(self, kind: str, ref: str) -> None:
        for _ in range(_RETRIES):
            kv, current = await self._load(kind, ref)
            if kind == "naming_pool":
                users = await self.list("node", {"naming_pool": current["name"]})
                if users:
                    raise Conflict(
                        f"naming pool {current['name']!r} is used by {len(users)} nodes (e.g. {users[0]['name']!r})"
                    )
            ops: list[Put | Delete] = [Delete(kv.key)]
            if _indexed(kind):
                ops.append(Delete(name_key(kind, current["name"])))
            if kind == "node":
                ops += [Delete(mac_key(m)) for m in current.get("mac", [])]
                ops.append(Delete(object_key("status", current["uid"])))
            if await self.store.txn([Compare(kv.key, kv.mod_revision)], ops) is not None:
                return
        raise Conflict(f"could not delete {kind} {ref!r}: it kept changing")

    # -- enrolment and status

    async def enrol(self, mac: str, pool: str) -> dict[str, Any]:
        """Create a node for an unknown MAC with the pool's next free index (CAS on the pool).

        Idempotent: a MAC that already belongs to a node (another head enrolled
        it first) returns that node.
        """
        mac = normalize_mac(mac)
        taken: set[str] | None = None
        for _ in range(_RETRIES * 4):
            owner = await self.store.get(mac_key(mac))
            if owner is not None:
                return await self.get("node", owner.value.decode())
            pool_kv = await self._find("naming_pool", pool)
            if pool_kv is None:
                await self._pool(pool)  # InvalidObject, or creates the 'default' pool
                continue
            pool_doc = json.loads(pool_kv.value)
            index = max(pool_doc["next_index"], pool_doc["first_index"])
            if taken is not None:
                while f"{pool_doc['prefix']}{index}" in taken:
                    index += 1
            now = self.clock()
            node = validate_new("node", {"index": index, "mac": [mac], "naming_pool": pool_doc["name"]}, now)
            self._name_node(node, pool_doc, name_given=False, index_given=True)
            new_pool = {**pool_doc, "next_index": index + 1, "last_modified": now}
            compares, ops = self._create_txn("node", node)
            compares.append(Compare(pool_kv.key, pool_kv.mod_revision))
            if await self.store.txn(compares, [*ops, Put(pool_kv.key, encode(new_pool))]) is not None:
                return node
            if await self.store.get(name_key("node", node["name"])) is not None:
                # Someone created that name without going through the pool: learn every taken name once.
                kvs, _ = await self.store.list(f"{INDEX_PREFIX}node/name/")
                taken = {kv.key.rsplit("/", 1)[1] for kv in kvs}
        raise Conflict(f"could not enrol {mac} in pool {pool!r}: too much contention")

    async def put_status(self, node: str, fields: Mapping[str, Any], ttl: int = 900) -> dict[str, Any]:
        """Merge ``fields`` into the node's status and (re)arm its TTL; returns the status.

        ``phases`` and ``hardware`` are merged key by key; ``last_seen``
        defaults to now. The status disappears ``ttl`` seconds after the last call.
        """
        _, owner = await self._load("node", node)
        key = object_key("status", owner["uid"])
        lease = await self.store.grant_lease(ttl)
        for _ in range(_RETRIES):
            kv = await self.store.get(key)
            now = self.clock()
            patch: dict[str, Any] = {"last_seen": now, **fields, "name": owner["name"], "node_uid": owner["uid"]}
            if kv is None:
                patch.setdefault("mac", owner["mac"][0] if owner.get("mac") else "")
                status = validate_new("status", patch, now)
                status["uid"] = owner["uid"]
            else:
                current = json.loads(kv.value)
                for merged in ("phases", "hardware"):
                    if isinstance(fields.get(merged), dict) and isinstance(current.get(merged), dict):
                        patch[merged] = {**current[merged], **fields[merged]}
                status = validate_patch("status", current, patch, now)
                status["last_modified"] = now
            compare = Compare(key, 0 if kv is None else kv.mod_revision)
            if await self.store.txn([compare], [Put(key, encode(status), lease)]) is not None:
                return status
        raise Conflict(f"could not report the status of node {node!r}: it kept changing")

    # Last in the class: a method named list shadows the builtin in annotations below it.
    async def list(self, kind: str, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every object of ``kind`` (natural order of names) whose fields match ``filters``.

        A filter ``field=value`` matches when the field equals the value (numbers
        compared as text), or contains it for list fields (``groups=rack1``,
        ``mac=52:54:...``); ``attributes.<key>=value`` matches one attribute;
        values with ``*?[`` are shell globs (``name=n1*``).
        """
        match = _compile_filters(kind, filters or {})
        kvs, _ = await self.store.list(kind_prefix(kind))
        docs = [doc for doc in (json.loads(kv.value) for kv in kvs) if match(doc)]
        docs.sort(key=lambda d: _natural(d.get("name", "")))
        return docs


def _compile_filters(kind: str, filters: Mapping[str, str]) -> Callable[[Mapping[str, Any]], bool]:
    spec = fields_of(kind)
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for field, wanted in filters.items():
        base, _, sub = field.partition(".")
        f = spec.get(base)
        if f is None:
            raise InvalidObject(f"unknown filter field '{field}' for kind {kind}")
        if f.secret:
            raise InvalidObject(f"cannot filter on secret field '{field}'")
        if not isinstance(wanted, str):
            raise InvalidObject(f"filter '{field}': expected a string value")
        if base == "mac":
            try:
                wanted = normalize_mac(wanted)
            except InvalidObject:
                pass
        tests.append(_field_test(base, sub, wanted))
    return lambda doc: all(test(doc) for test in tests)


def _field_test(field: str, sub: str, wanted: str) -> Callable[[Mapping[str, Any]], bool]:
    glob = any(ch in wanted for ch in "*?[")

    def same(value: Any) -> bool:
        text = value if isinstance(value, str) else json.dumps(value)
        return fnmatch.fnmatchcase(text, wanted) if glob else text == wanted

    def test(doc: Mapping[str, Any]) -> bool:
        value = doc.get(field)
        if sub:
            return isinstance(value, dict) and sub in value and same(value[sub])
        if isinstance(value, list):
            return any(same(v) for v in value)
        return value is not None and same(value)

    return test
