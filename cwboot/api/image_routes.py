"""``POST /api/v1/images/{name}/sync``: mirror one image of this head's image store into its object.

    200 the ``image`` object, its ``versions``/``latest`` as this head's store has them
    404 this head's image store has no image of that name

An image's ``versions`` and ``latest`` are read-only through the object routes:
the head's image store (its ``index.json``) decides what nodes boot, and
``cwboot images import/rollback/remove`` change it. The CLI calls this route
after such a change so listings show it at once; the head also re-syncs by
itself when an index changes (``cwboot.head.keep_images_mirrored``).
"""

from __future__ import annotations

from cwboot.api.http import ApiError, Request, Response, json_response
from cwboot.api.object_routes import API_PREFIX
from cwboot.api.routing import Route
from cwboot.control import objects
from cwboot.control.images import ImageStore
from cwboot.control.repo import Objects

SYNC_PATH = f"{API_PREFIX}/images/{{name}}/sync"


def image_routes(images: ImageStore, repo: Objects) -> list[Route]:
    """The sync route over this head's ``images`` store; pass to ``create_app(extra_routes=...)``."""

    async def sync(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in images.names():
            raise ApiError(404, f"this head's image store has no image {name!r}")
        await images.sync_objects(repo, [name])
        return json_response(objects.redact("image", await repo.get("image", name)))

    return [
        Route(
            "POST",
            SYNC_PATH,
            sync,
            access="admin",
            summary="Mirror one image's versions/latest from this head's image store into its object",
        )
    ]
