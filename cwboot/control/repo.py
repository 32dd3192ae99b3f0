"""The object layer: kinds of JSON objects on top of the key/value Store.

Key layout (one source of truth; the cache and both backends use it):

    /cwboot/v1/<kind>/<uid>                    -> JSON document
    /cwboot/v1/index/<kind>/name/<name>        -> uid   (unique names)
    /cwboot/v1/index/node/mac/<mac>            -> uid   (unique MACs)

Every create/update/delete writes the object and its index keys in one
transaction with compares, so two heads can never create the same name or MAC.
Enrolment of an unknown MAC advances the naming pool's ``next_index`` with a
compare-and-swap, so two heads never hand out the same index.

TO BE IMPLEMENTED by the store work (signatures are the contract the API, CLI
and DHCP code against).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cwboot.control.store.base import Store

PREFIX = "/cwboot/v1/"


def object_key(kind: str, uid: str) -> str:
    return f"{PREFIX}{kind}/{uid}"


class Objects:
    """CRUD for every kind. Raises cwboot.control.objects.{InvalidObject,NotFound,Conflict}."""

    def __init__(self, store: Store, clock: Any = None) -> None:
        self.store = store

    async def create(self, kind: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, assign uid/last_modified (nodes: name from pool+index), write with index keys."""
        raise NotImplementedError

    async def create_many(self, kind: str, docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Bulk create in batched transactions (10,000 nodes must be fast); all-or-nothing per batch."""
        raise NotImplementedError

    async def get(self, kind: str, ref: str) -> dict[str, Any]:
        """By uid or name; NotFound otherwise. Secrets included (callers redact)."""
        raise NotImplementedError

    async def list(self, kind: str, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def update(self, kind: str, ref: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def delete(self, kind: str, ref: str) -> None:
        raise NotImplementedError

    async def enrol(self, mac: str, pool: str) -> dict[str, Any]:
        """Create a node for an unknown MAC with the pool's next free index (CAS on the pool)."""
        raise NotImplementedError
