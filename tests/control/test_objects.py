"""Object validation: fields named in every error, secrets redacted, IPs derived."""

import pytest

from cwboot.control import objects
from cwboot.control.objects import InvalidObject


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("52:54:00:AB:cd:01", "52:54:00:ab:cd:01"),
        ("52-54-00-ab-cd-01", "52:54:00:ab:cd:01"),
        ("525400abcd01", "52:54:00:ab:cd:01"),
    ],
)
def test_mac_forms(raw: str, normal: str) -> None:
    assert objects.normalize_mac(raw) == normal


@pytest.mark.parametrize("raw", ["52:54:00:ab:cd", "52:54-00:ab:cd:01", "zz:54:00:ab:cd:01", 5, ""])
def test_bad_macs(raw: object) -> None:
    with pytest.raises(InvalidObject, match="bad MAC"):
        objects.normalize_mac(raw)


def test_new_node_gets_defaults_uid_and_time() -> None:
    doc = objects.validate_new("node", {"index": 3, "mac": "52:54:00:00:00:03"}, now=100.0)
    assert doc["mac"] == ["52:54:00:00:00:03"]
    assert doc["boot_config"] == "default" and doc["groups"] == [] and doc["attributes"] == {}
    assert len(doc["uid"]) == 32 and doc["last_modified"] == 100.0


@pytest.mark.parametrize(
    ("kind", "doc", "message"),
    [
        ("node", {"index": 1, "colour": "red"}, "unknown field 'colour'"),
        ("node", {"index": 1, "uid": "x"}, "field 'uid' is set by the server"),
        ("node", {"index": -1}, "field 'index'"),
        ("node", {"index": 1, "ip": "10.0.0.300"}, "field 'ip'"),
        ("node", {"index": 1, "power_uri": "ipmi://admin:pw@bmc:623"}, "power_password"),
        ("node", {"index": 1, "mac": ["52:54:00:00:00:01", "52-54-00-00-00-01"]}, "listed twice"),
        ("boot_config", {"cmdline": "quiet"}, "field 'name' is required"),
        ("boot_config", {"name": "b", "boot_style": "nfs"}, "field 'boot_style'"),
        ("naming_pool", {"name": "p", "network": "10.0.0.0/33"}, "field 'network'"),
        ("boot_config", {"name": "bad name"}, "field 'name'"),
    ],
)
def test_invalid_documents_name_the_field(kind: str, doc: dict, message: str) -> None:
    with pytest.raises(InvalidObject, match=message):
        objects.validate_new(kind, doc, now=0.0)


def test_patch_refreshes_last_modified_only_on_change() -> None:
    doc = objects.validate_new("boot_config", {"name": "b"}, now=1.0)
    same = objects.validate_patch("boot_config", doc, {"cmdline": ""}, now=2.0)
    assert same["last_modified"] == 1.0
    changed = objects.validate_patch("boot_config", doc, {"cmdline": "quiet"}, now=3.0)
    assert changed["last_modified"] == 3.0 and changed["uid"] == doc["uid"]
    with pytest.raises(InvalidObject, match="set by the server"):
        objects.validate_patch("boot_config", doc, {"uid": "other"}, now=4.0)


def test_secrets_never_read_back() -> None:
    doc = objects.validate_new("node", {"index": 1, "power_password": "s3cret"}, now=0.0)
    out = objects.redact("node", doc)
    assert "power_password" not in out and out["power_password_set"] is True
    assert "s3cret" not in repr(out)


def test_node_ip_explicit_or_derived() -> None:
    pool = objects.validate_new("naming_pool", {"name": "default", "network": "10.54.0.0/24"}, now=0.0)
    assert objects.node_ip({"index": 5}, pool) == "10.54.0.105"
    assert objects.node_ip({"index": 5, "ip": "10.9.9.9"}, pool) == "10.9.9.9"
    assert objects.node_ip({"index": 200}, pool) == ""  # past the network: no address
    zero = {**pool, "ip_offset": 0}
    assert objects.node_ip({"index": 0}, zero) == ""  # the network address is no host
    assert objects.node_name(pool, 7) == "n7"


def test_unknown_kind_is_not_found() -> None:
    with pytest.raises(objects.NotFound, match="unknown kind"):
        objects.validate_new("printer", {}, now=0.0)


def test_mirrored_image_fields_are_refused_from_clients_but_stay_writable_inside() -> None:
    image = objects.validate_new("image", {"name": "img", "latest": "2", "versions": [{"version": "2"}]}, now=0.0)
    assert image["latest"] == "2"  # validation (what Objects, hence sync_objects, runs) accepts them
    for doc in ({"name": "img", "latest": "1"}, {"name": "img", "versions": []}):
        with pytest.raises(InvalidObject, match=r"is read-only: .*'cwboot images import/rollback/remove'"):
            objects.without_mirrored_fields("image", doc)
    with pytest.raises(InvalidObject, match="field 'latest' is read-only"):
        objects.without_mirrored_fields("image", {"latest": "1"}, current=image)
    # Echoing what was read is harmless: dropped, so the write cannot undo a later sync.
    echo = {"description": "base", "latest": "2", "versions": [{"version": "2"}]}
    assert objects.without_mirrored_fields("image", echo, current=image) == {"description": "base"}
    node = {"index": 1, "mac": ["52:54:00:00:00:01"]}
    assert objects.without_mirrored_fields("node", node) == node
