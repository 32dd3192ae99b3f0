"""Smoke test of the REST API over the etcd backend (a real etcd server started by the test)."""

from pathlib import Path

import pytest

from tests.api.harness import api_config, served_api
from tests.etcd_server import EtcdServer


@pytest.mark.etcd
def test_api_over_etcd(tmp_path: Path) -> None:
    (tmp_path / "etcd").mkdir()
    with EtcdServer(tmp_path / "etcd") as etcd:
        config = api_config(tmp_path)
        config.store.backend = "etcd"
        config.store.etcd_endpoints = [etcd.endpoint]
        with served_api(config) as api, api.client() as admin:
            bulk = [{"index": i, "mac": f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}", "power_password": "pw"} for i in range(300)]
            r = admin.post("/api/v1/nodes", json=bulk)
            assert r.status_code == 201, r.text
            assert len(r.json()) == 300 and "pw" not in r.text

            r = admin.post("/api/v1/nodes", json={"index": 999, "mac": "52:54:00:00:00:05"})
            assert r.status_code == 409 and "n5" in r.json()["error"]

            assert admin.patch("/api/v1/nodes/n7", json={"boot_config": "debug"}).json()["boot_config"] == "debug"
            assert [n["name"] for n in admin.get("/api/v1/nodes", params={"boot_config": "debug"}).json()] == ["n7"]
            assert admin.delete("/api/v1/nodes/n7").status_code == 204
            assert admin.get("/api/v1/nodes/n7").status_code == 404
            assert len(admin.get("/api/v1/nodes").json()) == 299
        # The objects live in etcd itself, under the documented key layout.
        assert "/cwboot/v1/node/" in etcd.etcdctl("get", "--prefix", "--keys-only", "--limit=1", "/cwboot/v1/node/")
