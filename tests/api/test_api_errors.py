"""Every kind of bad input gets a 4xx with a JSON {"error": ...} that says what is wrong."""

import json

import httpx
import pytest

from tests.api.harness import MAX_BODY


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_unknown_field(admin: httpx.Client) -> None:
    assert "unknown field 'colour'" in error_of(admin.post("/api/v1/nodes", json={"index": 1, "colour": "red"}), 400)
    admin.post("/api/v1/boot_configs", json={"name": "a"}).raise_for_status()
    assert "unknown field 'kernal'" in error_of(admin.patch("/api/v1/boot_configs/a", json={"kernal": "x"}), 400)


def test_server_set_field_is_refused(admin: httpx.Client) -> None:
    assert "'uid' is set by the server" in error_of(admin.post("/api/v1/boot_configs", json={"name": "a", "uid": "x"}), 400)


def test_bad_mac(admin: httpx.Client) -> None:
    assert "bad MAC" in error_of(admin.post("/api/v1/nodes", json={"index": 1, "mac": "52:54:00:zz:00:01"}), 400)
    bulk = [{"index": 0, "mac": "52:54:00:00:00:00"}, {"index": 1, "mac": "nope"}]
    message = error_of(admin.post("/api/v1/nodes", json=bulk), 400)
    assert "item 1" in message and "bad MAC" in message
    assert admin.get("/api/v1/nodes").json() == []  # validated before anything is written


def test_duplicate_name_is_409(admin: httpx.Client) -> None:
    admin.post("/api/v1/boot_configs", json={"name": "compute"}).raise_for_status()
    assert "compute" in error_of(admin.post("/api/v1/boot_configs", json={"name": "compute"}), 409)
    admin.post("/api/v1/nodes", json={"index": 1}).raise_for_status()
    assert "n1" in error_of(admin.post("/api/v1/nodes", json={"index": 1}), 409)


def test_duplicate_mac_is_409(admin: httpx.Client) -> None:
    admin.post("/api/v1/nodes", json={"index": 1, "mac": "52:54:00:00:00:01"}).raise_for_status()
    message = error_of(admin.post("/api/v1/nodes", json={"index": 2, "mac": "52:54:00:00:00:01"}), 409)
    assert "52:54:00:00:00:01" in message and "n1" in message
    admin.post("/api/v1/nodes", json={"index": 3, "mac": "52:54:00:00:00:03"}).raise_for_status()
    assert "52:54:00:00:00:01" in error_of(admin.patch("/api/v1/nodes/n3", json={"mac": ["52:54:00:00:00:01"]}), 409)


def test_duplicate_mac_inside_one_bulk_request_is_409_and_writes_nothing(admin: httpx.Client) -> None:
    bulk = [{"index": i, "mac": "52:54:00:00:00:07" if i in (2, 5) else f"52:54:00:00:01:{i:02x}"} for i in range(8)]
    assert "appears twice" in error_of(admin.post("/api/v1/nodes", json=bulk), 409)
    assert admin.get("/api/v1/nodes").json() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"index": 1,', "invalid JSON"),
        (b"", "empty"),
        (b'{"index": NaN}', "NaN"),
        (b'{"description": "\xff\xfe"}', "invalid JSON"),
        (b'{"description": "\\ud800"}', "invalid JSON"),
        (b'{"index": 1' + b"1" * 5000 + b"}", "invalid JSON"),
    ],
    ids=["truncated", "empty", "nan", "bad-utf8", "lone-surrogate", "huge-int"],
)
def test_invalid_json(admin: httpx.Client, body: bytes, expected: str) -> None:
    r = admin.post("/api/v1/nodes", content=body, headers={"content-type": "application/json"})
    assert expected in error_of(r, 400)


@pytest.mark.parametrize("body", [b"5", b'"node"', b"[1, 2]", b"null"])
def test_body_of_the_wrong_shape(admin: httpx.Client, body: bytes) -> None:
    assert "expected" in error_of(admin.post("/api/v1/boot_configs", content=body), 400)


def test_patch_needs_an_object(admin: httpx.Client) -> None:
    admin.post("/api/v1/boot_configs", json={"name": "a"}).raise_for_status()
    assert "expected a JSON object" in error_of(admin.patch("/api/v1/boot_configs/a", json=[{"kernel": "x"}]), 400)


def test_too_deeply_nested_json(admin: httpx.Client) -> None:
    deep = b'{"attributes": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert "nested 41 levels" in error_of(admin.post("/api/v1/nodes", content=deep), 400)
    # Deep enough to overflow a recursive parser: refused just the same, not a 500.
    abyss = b"[" * 100_000 + b"]" * 100_000
    assert "nested" in error_of(admin.post("/api/v1/nodes", content=abyss), 400)


def test_brackets_inside_strings_do_not_count_as_nesting(admin: httpx.Client) -> None:
    text = '[{"\\"' * 50
    r = admin.post("/api/v1/boot_configs", json={"name": "b", "cmdline": text})
    assert r.status_code == 201, r.text
    assert r.json()["cmdline"] == text


def test_oversized_body_with_content_length_is_413(admin: httpx.Client) -> None:
    body = json.dumps([{"index": i, "description": "x" * 100} for i in range(MAX_BODY // 100)]).encode()
    assert len(body) > MAX_BODY
    assert "larger than" in error_of(admin.post("/api/v1/nodes", content=body), 413)
    assert admin.get("/api/v1/nodes").json() == []


def test_oversized_streamed_body_is_refused_while_reading(admin: httpx.Client) -> None:
    """No Content-Length (chunked): the API stops reading at the limit instead of buffering it all."""
    chunk = b" " * 16384
    total_chunks = 4000  # 64 MiB offered
    sent = 0

    def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(total_chunks):
            sent += 1
            yield chunk

    try:
        r = admin.post("/api/v1/nodes", content=body())
    except httpx.TransportError:
        # The server answered, drained a bounded amount and closed while we were
        # still sending: the refusal came near the limit, not after the whole body.
        assert sent < total_chunks
        return
    assert "larger than" in error_of(r, 413)
    assert sent < total_chunks


def test_unknown_kind_and_route_are_404(admin: httpx.Client) -> None:
    assert "no such endpoint" in error_of(admin.get("/api/v1/widgets"), 404)
    assert "no such endpoint" in error_of(admin.get("/api/v2/nodes"), 404)
    assert "no such endpoint" in error_of(admin.get("/api/v1/nodes/n1/extra"), 404)
    assert "no such endpoint" in error_of(admin.get("/"), 404)


def test_unknown_object_is_404_for_every_verb(admin: httpx.Client) -> None:
    error_of(admin.get("/api/v1/nodes/n404"), 404)
    error_of(admin.patch("/api/v1/nodes/n404", json={"description": "x"}), 404)
    error_of(admin.delete("/api/v1/nodes/n404"), 404)


def test_wrong_method_is_405_with_allow(admin: httpx.Client) -> None:
    r = admin.put("/api/v1/nodes", json={})
    assert "not allowed" in error_of(r, 405)
    assert r.headers["allow"] == "GET, POST"
    r = admin.post("/api/v1/nodes/n1", json={})
    error_of(r, 405)
    assert r.headers["allow"] == "DELETE, GET, PATCH"
    error_of(admin.delete("/api/v1/health"), 405)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("colour=red", "unknown filter 'colour'"),
        ("power_password=hunter2", "secret"),
        ("groups=a&groups=b", "given twice"),
    ],
)
def test_bad_list_filters(admin: httpx.Client, query: str, expected: str) -> None:
    assert expected in error_of(admin.get(f"/api/v1/nodes?{query}"), 400)


def test_status_objects_cannot_be_created_through_the_api(admin: httpx.Client) -> None:
    error_of(admin.post("/api/v1/status", json={"name": "n1"}), 400)


def test_a_failing_handler_is_a_bare_500(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cwboot.api import Route
    from tests.api.harness import api_config, served_api

    async def broken(request):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    with served_api(api_config(tmp_path), [Route("GET", "/api/v1/broken", broken)]) as served:
        with served.client() as client:
            message = error_of(client.get("/api/v1/broken"), 500)
    assert "secret internals" not in message and "internal error" in message
