"""Serving the API with hypercorn on trio, in the caller's nursery.

``await nursery.start(serve_api, app, config)`` returns an ``ApiBinding``
with the port actually bound (bind port 0 in tests and read it back). The
server runs until the caller's scope is cancelled or ``shutdown`` is set
(graceful: in-flight requests get ``graceful_timeout`` seconds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio

from cwboot.api.app import ApiApp
from cwboot.config import ApiConfig, Config


@dataclass(frozen=True)
class ApiBinding:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def hypercorn_config(api: ApiConfig, *, graceful_timeout: float = 2.0) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    host = f"[{api.listen}]" if ":" in api.listen else api.listen
    hc.bind = [f"{host}:{api.port}"]
    hc.accesslog = None
    # Through logging (the head configures it), not straight to stderr.
    hc.errorlog = logging.getLogger("cwboot.api.hypercorn")
    hc.graceful_timeout = graceful_timeout
    # Request bodies are bounded by the app (413 while reading); headers by h11 here.
    hc.h11_max_incomplete_size = 64 * 1024
    return hc


def _parse_bind(bind: str) -> ApiBinding:
    """``http://127.0.0.1:8080`` / ``http://[::1]:8080`` -> ApiBinding."""
    hostport = bind.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return ApiBinding(host.strip("[]"), int(port))


async def serve_api(
    app: ApiApp,
    config: Config | ApiConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[ApiBinding] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run hypercorn on ``api.listen:api.port``; reports the bound ApiBinding when listening."""
    api = config.api if isinstance(config, Config) else config
    trigger = shutdown.wait if shutdown is not None else None
    async with trio.open_nursery() as nursery:
        # ApiApp is an ASGI 3 app; hypercorn's TypedDict scopes are only narrower types of our mappings.
        serve = partial(hypercorn.trio.serve, app, hypercorn_config(api), shutdown_trigger=trigger)  # type: ignore[arg-type]
        binds = await nursery.start(serve)
        task_status.started(_parse_bind(binds[0]))
