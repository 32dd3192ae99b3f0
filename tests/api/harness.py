"""The REST API served for real in tests: hypercorn on 127.0.0.1, port 0, over a real store.

``served_api(config)`` runs the store, ``Objects``, ``create_app`` and
``serve_api`` in a trio loop on a background thread (so synchronous httpx and
the CLI's ``main()`` can talk to it from the test thread) and stops it by
cancelling that loop, even when the test fails.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from cwboot.api import ApiBinding, Route, create_app, serve_api
from cwboot.config import Config, from_dict
from cwboot.control.repo import Objects
from cwboot.control.store import open_store

ADMIN = "admin-token-for-tests"
READER = "read-token-for-tests"
# api.max_body_bytes of the `api` fixture: small, so the oversized-body tests stay fast.
MAX_BODY = 256 * 1024


def api_config(state_dir: Path, **api: Any) -> Config:
    """A config for a test head: state in ``state_dir``, API on 127.0.0.1 port 0, known tokens."""
    return from_dict(
        {
            "head": {"state_dir": str(state_dir)},
            "api": {"listen": "127.0.0.1", "port": 0, "admin_tokens": [ADMIN], "read_tokens": [READER], **api},
        }
    )


@dataclass
class ServedApi:
    binding: ApiBinding
    config: Config
    # The served app's repository and loop, for writes only cwboot itself makes (``in_loop``).
    objects: Objects
    trio_token: trio.lowlevel.TrioToken

    def in_loop(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(*args)`` in the API's trio loop: e.g. ``objects.create`` of an image mirror."""
        return trio.from_thread.run(fn, *args, trio_token=self.trio_token)

    @property
    def url(self) -> str:
        return self.binding.url

    def client(self, token: str | None = ADMIN) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def served_api(config: Config, extra_routes: Iterable[Route] = ()) -> Iterator[ServedApi]:
    started: queue.Queue[Any] = queue.Queue()
    failure: list[BaseException] = []

    async def run() -> None:
        store = open_store(config)
        try:
            objects = Objects(store)
            app = create_app(objects, config, extra_routes)
            async with trio.open_nursery() as nursery:
                binding = await nursery.start(serve_api, app, config)
                started.put((binding, objects, trio.lowlevel.current_trio_token(), nursery.cancel_scope))
        finally:
            await store.aclose()

    def thread_main() -> None:
        try:
            trio.run(run)
        except BaseException as exc:  # handed to the test thread below
            failure.append(exc)
            started.put(exc)

    thread = threading.Thread(target=thread_main, name="served-api", daemon=True)
    thread.start()
    item = started.get(timeout=30)
    if isinstance(item, BaseException):
        thread.join()
        raise item
    binding, objects, token, scope = item
    try:
        yield ServedApi(binding, config, objects, token)
    finally:
        try:
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        except trio.RunFinishedError:
            pass
        thread.join(30)
        assert not thread.is_alive(), "the API server did not stop"
        if failure:
            raise failure[0]
