"""The CLI's REST API client: ``api_client(args)`` -> ``ApiClient`` (httpx, synchronous).

Where it connects, first match wins: ``--url``/``--token``; $CWBOOT_URL /
$CWBOOT_TOKEN; the config file (``http://<api.listen>:<api.port>`` and the
admin token file, ``api.admin_token_file`` or ``<head.state_dir>/admin.token``,
else the first of ``api.admin_tokens``/``api.read_tokens``).

Every failure, from a refused connection to the API's ``{"error": ...}``,
becomes ``ApiRequestError`` with a one-line message (a CliError).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from cwboot.api.auth import admin_token_path, read_token_file
from cwboot.api.object_routes import API_PREFIX, collection_of
from cwboot.cli.command import CliError, load_config


class ApiRequestError(CliError):
    """The API refused a request (``status`` is its HTTP status) or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """Thin synchronous client of the REST API; JSON in, JSON out."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``method`` on ``path`` (relative to the API URL); the decoded JSON answer or None (204)."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._http.request(method, path, params=params, json=json, headers=headers, **extra)
        except httpx.TimeoutException:
            raise ApiRequestError(0, f"the API at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiRequestError(0, f"cannot reach the API at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:200] or response.reason_phrase
            raise ApiRequestError(response.status_code, f"{message} (HTTP {response.status_code})")
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiRequestError(response.status_code, f"the API at {self.url} answered something that is not JSON") from None

    # Objects, by kind (see cwboot.control.objects.KINDS).

    def _path(self, kind: str, ref: str | None = None) -> str:
        base = f"{API_PREFIX}/{collection_of(kind)}"
        return base if ref is None else f"{base}/{quote(ref, safe='')}"

    def list_objects(self, kind: str, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = self.request("GET", self._path(kind), params=filters)
        return objs

    def get_object(self, kind: str, ref: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("GET", self._path(kind, ref))
        return obj

    def create_object(self, kind: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("POST", self._path(kind), json=dict(doc))
        return obj

    def create_objects(
        self, kind: str, docs: Sequence[Mapping[str, Any]], *, minimal: bool = False
    ) -> list[dict[str, Any]]:
        """One POST with a JSON list: the server adds them in batched transactions.
        ``minimal``: the answer holds only each object's uid and name."""
        headers = {"prefer": "return=minimal"} if minimal else None
        # A large bulk add on etcd takes a while: allow about a second per 100 objects.
        timeout = max(60.0, len(docs) / 100)
        objs: list[dict[str, Any]] = self.request("POST", self._path(kind), json=[dict(d) for d in docs], headers=headers, timeout=timeout)
        return objs

    def update_object(self, kind: str, ref: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("PATCH", self._path(kind, ref), json=dict(patch))
        return obj

    def delete_object(self, kind: str, ref: str) -> None:
        self.request("DELETE", self._path(kind, ref))


def _connect_host(listen: str) -> str:
    """Where to connect to reach a server listening on ``listen`` (wildcards -> loopback)."""
    if listen in ("", "0.0.0.0"):
        return "127.0.0.1"
    if listen == "::":
        return "[::1]"
    return f"[{listen}]" if ":" in listen else listen


def api_target(args: argparse.Namespace) -> tuple[str, str]:
    """The API URL and token for this invocation (see the module docstring for the order)."""
    url = getattr(args, "url", None) or os.environ.get("CWBOOT_URL")
    token = getattr(args, "token", None) or os.environ.get("CWBOOT_TOKEN")
    if url and token:
        return url, token
    config = load_config(args)
    if not url:
        url = f"http://{_connect_host(config.api.listen)}:{config.api.port}"
    if not token:
        path = admin_token_path(config)
        if path is not None and path.exists():
            try:
                token = read_token_file(path)
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot read the admin token file {path}: {exc}; pass --token or set CWBOOT_TOKEN") from None
        elif config.api.admin_tokens or config.api.read_tokens:
            token = (config.api.admin_tokens or config.api.read_tokens)[0]
        else:
            raise CliError(f"no API token: pass --token, set CWBOOT_TOKEN, or create {path}")
    return url, token


def api_client(args: argparse.Namespace) -> ApiClient:
    """An ApiClient for the URL and token this invocation names."""
    url, token = api_target(args)
    return ApiClient(url, token)
