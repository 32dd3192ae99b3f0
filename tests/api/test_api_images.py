"""Image objects through the REST API: ``versions``/``latest`` mirror the head's image store.

The store's index.json decides what nodes boot, so the API refuses client writes
to those two fields (400 naming the commands that change them), while the
internal writer (``ImageStore.sync_objects`` through ``Objects``) still sets
them, and ``POST /api/v1/images/{name}/sync`` — what the CLI calls after an
import/rollback/remove — mirrors this head's store on demand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import trio

from cwboot.api import create_app, serve_api
from cwboot.api.image_routes import image_routes
from cwboot.control.images import ImageStore
from cwboot.control.repo import Objects
from cwboot.control.store import open_store
from tests.api.harness import ADMIN, READER, api_config

ROOT = Path(__file__).resolve().parents[2]
READ_ONLY = "is read-only: it mirrors the head's image store and is set by 'cwboot images import/rollback/remove'"


def test_clients_cannot_write_versions_or_latest(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/images", json={"name": "img", "latest": "2"})
    assert r.status_code == 400 and r.json()["error"] == f"field 'latest' {READ_ONLY} (changing it here would not change what nodes boot)"
    r = admin.post("/api/v1/images", json=[{"name": "a"}, {"name": "b", "versions": [{"version": "1"}]}])
    assert r.status_code == 400 and r.json()["error"].startswith(f"item 1 of the list: field 'versions' {READ_ONLY}")
    assert admin.get("/api/v1/images").json() == []  # the bulk add wrote nothing

    r = admin.post("/api/v1/images", json={"name": "img", "description": "base"})
    assert r.status_code == 201 and r.json()["latest"] == "" and r.json()["versions"] == []
    r = admin.patch("/api/v1/images/img", json={"latest": "2"})
    assert r.status_code == 400 and f"field 'latest' {READ_ONLY}" in r.json()["error"]
    r = admin.patch("/api/v1/images/img", json={"description": "x", "versions": [{"version": "2"}]})
    assert r.status_code == 400 and "field 'versions'" in r.json()["error"]
    assert admin.get("/api/v1/images/img").json()["description"] == "base"  # nothing half-applied
    # Sending back what was read (the mirror's current values) is fine: only the rest changes.
    doc = admin.get("/api/v1/images/img").json()
    r = admin.patch("/api/v1/images/img", json={**doc, "description": "rocky 9"})
    assert r.status_code == 200 and r.json()["description"] == "rocky 9" and r.json()["latest"] == ""
    assert admin.patch("/api/v1/images/nothing", json={"latest": "1"}).status_code == 404


def test_sync_route_and_cli_mirror_the_store_that_the_api_refuses_to_edit(tmp_path: Path) -> None:
    trio.run(_sync_route_and_cli, tmp_path)


async def _sync_route_and_cli(tmp_path: Path) -> None:
    config = api_config(tmp_path / "state")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "motd").write_text("version one\n")
    images = ImageStore(tmp_path / "images", chunk_size=64 * 1024)
    images.import_tree("img", tree)
    store = open_store(config)
    try:
        objects = Objects(store)
        async with trio.open_nursery() as nursery:
            app = create_app(objects, config, image_routes(images, objects))
            binding = await nursery.start(serve_api, app, config)
            async with httpx.AsyncClient(
                base_url=binding.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10
            ) as admin:
                # The internal writer sets the fields the API refuses.
                await images.sync_objects(objects)
                assert (await admin.get("/api/v1/images/img")).json()["latest"] == "1"
                r = await admin.patch("/api/v1/images/img", json={"latest": "2"})
                assert r.status_code == 400 and "cwboot images import/rollback/remove" in r.text

                images.import_tree("img", tree, version="2")  # behind the API's back
                r = await admin.post("/api/v1/images/img/sync")
                assert r.status_code == 200, r.text
                assert r.json()["latest"] == "2" and [v["version"] for v in r.json()["versions"]] == ["1", "2"]
                assert (await admin.get("/api/v1/images/img")).json()["latest"] == "2"
                r = await admin.post("/api/v1/images/nothing/sync")
                assert r.status_code == 404 and "this head's image store has no image 'nothing'" in r.text
                r = await admin.post("/api/v1/images/img/sync", headers={"authorization": f"Bearer {READER}"})
                assert r.status_code == 403

                # The CLI changes the store, then has the head mirror it: listed at once, no warning.
                for argv, latest in ((["rollback", "img"], "1"), (["import", "img", str(tree)], "3")):
                    cli = await trio.run_process(
                        [sys.executable, "-m", "cwboot", "images", *argv,
                         "--set", f"images.store_dir={images.root}", "--set", "images.chunk_size=65536",
                         "--set", f"head.state_dir={tmp_path / 'cli-state'}", "--url", binding.url, "--token", ADMIN],
                        capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT,
                        env={k: v for k, v in os.environ.items() if not k.startswith("CWBOOT_")},
                    )  # fmt: skip
                    assert cli.returncode == 0 and cli.stderr == b"", cli.stderr
                    assert (await admin.get("/api/v1/images/img")).json()["latest"] == latest
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


def test_openapi_marks_the_mirrored_fields_read_only(admin: httpx.Client) -> None:
    image = admin.get("/api/v1/openapi.json").json()["components"]["schemas"]["image"]["properties"]
    for field in ("latest", "versions"):
        assert image[field]["readOnly"] is True and "cwboot images import/rollback/remove" in image[field]["description"]
    assert "readOnly" not in image["description"]
