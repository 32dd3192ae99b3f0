"""Fixtures of the control-plane tests: a real etcd server and stores of both backends.

``etcd_server`` is one etcd for the whole session (tests/etcd_server.py);
``etcd_store_factory`` wipes it before each test. ``make_store`` is
parametrized over both backends (the etcd one marked ``etcd``) and returns a
factory to call inside the test's trio run (stores hold trio objects).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cwboot.control.store.base import Store
from cwboot.control.store.embedded import EmbeddedStore
from cwboot.control.store.etcd import EtcdStore
from tests.etcd_server import EtcdServer


class StoreFactory:
    """Opens stores of one backend instance; ``backend`` is "embedded" or "etcd"."""

    def __init__(self, backend: str, open_store: Callable[[], Store]) -> None:
        self.backend = backend
        self._open = open_store

    def __call__(self) -> Store:
        return self._open()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def etcd_store_factory(etcd_server: EtcdServer) -> StoreFactory:
    etcd_server.wipe()
    return StoreFactory("etcd", lambda: EtcdStore([etcd_server.endpoint]))


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of stores that share one backend instance (for etcd: several clients = several heads)."""
    if request.param == "etcd":
        return request.getfixturevalue("etcd_store_factory")
    return StoreFactory("embedded", lambda: EmbeddedStore(tmp_path / "store.sqlite3"))
