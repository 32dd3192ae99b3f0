"""``GET /dashboard``: the node-status page an administrator opens in a browser (no token).

The page is one file, ``cwboot/data/dashboard.html`` (HTML, CSS and vanilla JS;
nothing from elsewhere). It holds no data, so it is public. In the browser it
takes a token from the URL fragment (``/dashboard#token=...``; browsers never
send the fragment) or from a form, keeps it in sessionStorage, and reads
``/api/v1/{nodes,status,heads,naming_pools,stats}`` with it every 5 s. A read
token is enough. See docs/api.md.

The page puts every value from the API into the document as text. As a second
line of defence, the Content-Security-Policy lets only the page's own inline
script and style run (by their SHA-256) and lets it talk only to this origin.
So a value that got past the escaping still could not run script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from cwboot.api.http import Request, Response
from cwboot.api.routing import Route

DASHBOARD_PATH = "/dashboard"

_INLINE = {"script": re.compile(rb"<script>(.*?)</script>", re.S), "style": re.compile(rb"<style>(.*?)</style>", re.S)}


def dashboard_page() -> bytes:
    """The page as shipped in the package (``cwboot/data/dashboard.html``)."""
    return (resources.files("cwboot") / "data" / "dashboard.html").read_bytes()


def content_security_policy(page: bytes) -> str:
    """A CSP that admits exactly the inline ``<script>`` and ``<style>`` blocks of ``page``."""

    def hashes(tag: str) -> str:
        blocks = _INLINE[tag].findall(page)
        if not blocks:
            return "'none'"
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def dashboard_routes(page: bytes | None = None) -> list[Route]:
    """``GET /dashboard`` serving ``page`` (default: the packaged one, read once, now)."""
    body = dashboard_page() if page is None else page
    headers = {
        "content-type": "text/html; charset=utf-8",
        "content-security-policy": content_security_policy(body),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }

    async def dashboard(request: Request) -> Response:
        return Response(200, body, dict(headers))

    return [
        Route(
            "GET",
            DASHBOARD_PATH,
            dashboard,
            access="public",
            summary="Node-status page for browsers (holds no data; it reads the API with the token given in #token=...)",
        )
    ]
