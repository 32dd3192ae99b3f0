"""The token matrix: no route but health answers without a token; read tokens cannot write."""

from pathlib import Path

import httpx
import pytest

from cwboot.api import Route, json_response
from cwboot.api.auth import admin_token_path, bearer_token, tokens_from_config
from tests.api.harness import ADMIN, READER, ServedApi, api_config, served_api

# (method, path, JSON body, status for an admin token)
REQUESTS = [
    ("GET", "/api/v1/nodes", None, 200),
    ("GET", "/api/v1/boot_configs/seed", None, 200),
    ("GET", "/api/v1/openapi.json", None, 200),
    ("POST", "/api/v1/boot_configs", {"name": "new"}, 201),
    ("PATCH", "/api/v1/boot_configs/seed", {"cmdline": "quiet"}, 200),
    ("DELETE", "/api/v1/boot_configs/seed", None, 204),
]
TOKENS = {"none": None, "unknown": "not-a-token", "read": READER, "admin": ADMIN}


def expected_status(token: str, method: str, admin_status: int) -> int:
    if token in ("none", "unknown"):
        return 401
    if token == "read" and method != "GET":
        return 403
    return admin_status


@pytest.mark.parametrize("token", list(TOKENS))
def test_auth_matrix(api: ServedApi, token: str) -> None:
    with api.client() as admin:
        admin.post("/api/v1/boot_configs", json={"name": "seed"}).raise_for_status()
    with api.client(TOKENS[token]) as client:
        for method, path, body, admin_status in REQUESTS:
            r = client.request(method, path, json=body)
            assert r.status_code == expected_status(token, method, admin_status), (method, path, r.text)
            if r.status_code == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "token" in r.json()["error"]
            if r.status_code == 403:
                assert "admin token" in r.json()["error"]
        assert client.get("/api/v1/health").status_code == 200


def test_writes_refused_by_auth_leave_the_store_unchanged(api: ServedApi) -> None:
    with api.client(READER) as reader:
        assert reader.post("/api/v1/nodes", json={"index": 1}).status_code == 403
    with api.client(None) as anonymous:
        assert anonymous.post("/api/v1/nodes", json={"index": 2}).status_code == 401
    with api.client() as admin:
        assert admin.get("/api/v1/nodes").json() == []


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", f"Basic {ADMIN}", f"{ADMIN}", f"Bearer {ADMIN}x", f"Bearer {ADMIN[:-1]}"],
)
def test_malformed_or_wrong_authorization_is_401(api: ServedApi, authorization: str) -> None:
    with httpx.Client(base_url=api.url) as client:
        r = client.get("/api/v1/nodes", headers={"authorization": authorization})
    assert r.status_code == 401


def test_unauthenticated_requests_learn_nothing_about_routes(api: ServedApi) -> None:
    with api.client(None) as anonymous:
        assert anonymous.get("/api/v1/no-such-thing").status_code == 401
        assert anonymous.put("/api/v1/nodes").status_code == 401
    with api.client(READER) as reader:
        assert reader.get("/api/v1/no-such-thing").status_code == 404
        assert reader.put("/api/v1/nodes").status_code == 405


def test_admin_token_file_is_created_once_and_accepted(tmp_path: Path) -> None:
    config = api_config(tmp_path)
    path = admin_token_path(config)
    assert path == tmp_path / "admin.token" and not path.exists()
    with served_api(config) as served:
        token = path.read_text().strip()
        assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
        with served.client(token) as client:
            assert client.post("/api/v1/boot_configs", json={"name": "x"}).status_code == 201
    assert tokens_from_config(config).admin.count(token) == 1  # reused, not regenerated


def test_empty_tokens_are_never_accepted() -> None:
    config = api_config(Path("/nonexistent"), admin_tokens=[""], read_tokens=[""])
    tokens = tokens_from_config(config, create_token_file=False)
    assert tokens.admin == () and tokens.read == () and tokens.role_of("") is None
    assert bearer_token("Bearer ") is None and bearer_token("bearer  abc ") == "abc"


def test_extra_routes_get_auth_path_params_and_openapi(tmp_path: Path) -> None:
    async def power(request):  # type: ignore[no-untyped-def]
        return json_response({"action": request.path_params["action"], "role": request.role})

    async def enrol(request):  # type: ignore[no-untyped-def]
        return json_response({"enrolled": True}, 201)

    async def public_ping(request):  # type: ignore[no-untyped-def]
        return json_response("pong")

    routes = [
        Route("POST", "/api/v1/power/{action}", power, summary="Power nodes on or off"),
        Route("POST", "/api/v1/nodes/enrol", enrol),
        Route("GET", "/api/v1/ping", public_ping, access="public"),
    ]
    with served_api(api_config(tmp_path), routes) as served:
        with served.client() as admin, served.client(READER) as reader, served.client(None) as anonymous:
            assert admin.post("/api/v1/power/on").json() == {"action": "on", "role": "admin"}
            assert reader.post("/api/v1/power/on").status_code == 403
            assert anonymous.post("/api/v1/power/on").status_code == 401
            assert anonymous.get("/api/v1/ping").json() == "pong"
            # A literal segment wins over {ref} for its method; other methods still reach {ref}.
            assert admin.post("/api/v1/nodes/enrol").status_code == 201
            assert admin.get("/api/v1/nodes/enrol").status_code == 404
            doc = admin.get("/api/v1/openapi.json").json()
    assert doc["paths"]["/api/v1/power/{action}"]["post"]["summary"] == "Power nodes on or off"
    assert doc["paths"]["/api/v1/ping"]["get"]["security"] == []


def test_a_route_registered_twice_is_refused() -> None:
    from cwboot.api.routing import Router

    async def handler(request):  # type: ignore[no-untyped-def]
        return json_response(None)

    router = Router([Route("GET", "/api/v1/x/{a}", handler)])
    with pytest.raises(ValueError, match="already registered"):
        router.add(Route("GET", "/api/v1/x/{b}", handler))
    with pytest.raises(ValueError, match="must start with '/'"):
        Route("GET", "api/v1/x", handler)
