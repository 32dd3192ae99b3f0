"""CRUD through the REST API served by hypercorn over the embedded store."""

import json

import httpx

from tests.api.harness import READER, ServedApi


def mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def test_health_answers_without_a_token(api: ServedApi) -> None:
    with api.client(token=None) as anonymous:
        r = anonymous.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_create_get_by_name_and_uid_update_delete_a_node(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/nodes", json={"index": 3, "mac": "52-54-00-AA-BB-03", "groups": ["rack1"]})
    assert r.status_code == 201, r.text
    node = r.json()
    assert node["name"] == "n3" and node["mac"] == ["52:54:00:aa:bb:03"]
    assert admin.get("/api/v1/nodes/n3").json() == node
    assert admin.get(f"/api/v1/nodes/{node['uid']}").json() == node

    r = admin.patch("/api/v1/nodes/n3", json={"boot_config": "debug"})
    assert r.status_code == 200 and r.json()["boot_config"] == "debug"
    assert r.json()["last_modified"] >= node["last_modified"]

    r = admin.delete("/api/v1/nodes/n3")
    assert r.status_code == 204 and r.content == b""
    r = admin.get("/api/v1/nodes/n3")
    assert r.status_code == 404 and "n3" in r.json()["error"]


def test_every_kind_has_a_collection(admin: httpx.Client) -> None:
    for collection in ("nodes", "boot_configs", "images", "naming_pools", "heads", "status"):
        r = admin.get(f"/api/v1/{collection}")
        assert r.status_code == 200, (collection, r.text)
        assert isinstance(r.json(), list)


def test_boot_config_pool_image_and_head_round_trip(admin: httpx.Client) -> None:
    created = {
        "boot_configs": {"name": "compute", "kernel": "vmlinuz", "boot_style": "overlay"},
        "naming_pools": {"name": "gpu", "prefix": "g", "network": "10.60.0.0/16"},
        "images": {"name": "rocky9", "description": "base"},
        "heads": {"name": "head1", "addresses": ["127.0.0.1"]},
    }
    for collection, doc in created.items():
        r = admin.post(f"/api/v1/{collection}", json=doc)
        assert r.status_code == 201, (collection, r.text)
        got = admin.get(f"/api/v1/{collection}/{doc['name']}").json()
        assert {k: got[k] for k in doc} == doc
    assert admin.get("/api/v1/naming_pools/gpu").json()["ip_offset"] == 100  # default filled in


def test_trailing_slash_is_the_same_endpoint(admin: httpx.Client) -> None:
    assert admin.post("/api/v1/boot_configs/", json={"name": "a"}).status_code == 201
    assert [b["name"] for b in admin.get("/api/v1/boot_configs/").json()] == ["a"]


def test_bulk_create_is_one_request_and_returns_every_object(admin: httpx.Client) -> None:
    docs = [{"index": i, "mac": mac(i)} for i in range(500)]
    r = admin.post("/api/v1/nodes", json=docs)
    assert r.status_code == 201, r.text
    assert [n["name"] for n in r.json()] == [f"n{i}" for i in range(500)]
    listed = admin.get("/api/v1/nodes").json()
    assert len(listed) == 500 and listed[0]["name"] == "n0" and listed[-1]["name"] == "n499"


def test_bulk_create_can_answer_with_uids_and_names_only(admin: httpx.Client) -> None:
    docs = [{"index": i, "mac": mac(i), "power_password": "pw"} for i in range(20)]
    r = admin.post("/api/v1/nodes", json=docs, headers={"prefer": "return=minimal"})
    assert r.status_code == 201 and r.headers["preference-applied"] == "return=minimal"
    assert [set(d) for d in r.json()] == [{"uid", "name"}] * 20
    assert r.json()[3] == {"uid": admin.get("/api/v1/nodes/n3").json()["uid"], "name": "n3"}


def test_bulk_create_of_an_empty_list_creates_nothing(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/nodes", json=[])
    assert r.status_code == 201 and r.json() == []


def test_list_filters_by_field_list_member_and_attribute(admin: httpx.Client) -> None:
    admin.post(
        "/api/v1/nodes",
        json=[
            {"index": 0, "mac": mac(0), "groups": ["gpu"], "attributes": {"rack": "1"}, "boot_config": "a"},
            {"index": 1, "mac": mac(1), "groups": ["cpu"], "attributes": {"rack": "2"}, "boot_config": "a"},
            {"index": 2, "mac": mac(2), "groups": ["gpu"], "attributes": {"rack": "2"}, "boot_config": "b"},
        ],
    ).raise_for_status()

    def names(params: dict[str, str]) -> list[str]:
        r = admin.get("/api/v1/nodes", params=params)
        assert r.status_code == 200, r.text
        return [n["name"] for n in r.json()]

    assert names({"groups": "gpu"}) == ["n0", "n2"]
    assert names({"boot_config": "a", "groups": "gpu"}) == ["n0"]
    assert names({"attributes.rack": "2"}) == ["n1", "n2"]
    assert names({"mac": mac(1).upper()}) == ["n1"]
    assert names({"name": "n[01]"}) == ["n0", "n1"]


def test_secrets_are_never_returned(api: ServedApi, admin: httpx.Client) -> None:
    secret = "hunter2-bmc-password"
    r = admin.post(
        "/api/v1/nodes",
        json={"index": 1, "mac": mac(1), "power_uri": "ipmi://admin@10.1.0.1:623", "power_password": secret},
    )
    assert r.status_code == 201
    admin.post("/api/v1/nodes", json=[{"index": 2, "mac": mac(2), "power_password": secret}]).raise_for_status()
    r2 = admin.patch("/api/v1/nodes/n2", json={"power_password": secret + "x"})
    with api.client(READER) as reader:
        answers = [
            r,
            r2,
            admin.get("/api/v1/nodes"),
            admin.get("/api/v1/nodes/n1"),
            reader.get("/api/v1/nodes"),
            reader.get("/api/v1/nodes/n2"),
        ]
    for answer in answers:
        assert secret not in answer.text
        assert "power_password_set" in answer.text and '"power_password"' not in answer.text
    assert admin.get("/api/v1/nodes/n1").json()["power_password_set"] is True


def test_openapi_document_covers_every_kind_and_field(admin: httpx.Client) -> None:
    from cwboot.control import objects

    doc = admin.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for kind, collection in [("node", "nodes"), ("boot_config", "boot_configs"), ("status", "status")]:
        assert set(doc["paths"][f"/api/v1/{collection}"]) == {"get", "post"}
        assert set(doc["paths"][f"/api/v1/{collection}/{{ref}}"]) >= {"get", "patch", "delete"}
        assert set(objects.fields_of(kind)) <= set(doc["components"]["schemas"][kind]["properties"])
    node = doc["components"]["schemas"]["node"]["properties"]
    assert node["power_password"]["writeOnly"] is True and node["power_password_set"]["readOnly"] is True
    assert node["index"]["maximum"] == 10**7
    assert doc["components"]["schemas"]["boot_config"]["properties"]["boot_style"]["enum"] == ["rwram", "roram", "overlay"]
    assert doc["paths"]["/api/v1/health"]["get"]["security"] == []


def test_openapi_lists_every_route_and_every_ref_resolves(api: ServedApi, admin: httpx.Client) -> None:
    import re

    doc = admin.get("/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)):
        assert ref in schemas
    from cwboot.api.object_routes import collections

    for collection in collections():
        for method in ("get", "post"):
            assert method in doc["paths"][f"/api/v1/{collection}"]
    assert {"get"} <= set(doc["paths"]["/api/v1/openapi.json"])
