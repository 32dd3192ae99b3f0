"""The image store: determinism, dedup, atomic publish under kill -9, verify, rollback, gc.

Round trips go through the real `zstd` and busybox `tar` binaries, the tools the
initramfs uses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import trio

from cwboot.control.images import ImageError, ImageStore, read_chunk
from cwboot.control.repo import Objects
from cwboot.control.store.embedded import EmbeddedStore

CHUNK = 64 * 1024


def make_tree(root: Path, seed: int = 1, big: int = 300_000) -> Path:
    """A small root tree with every kind of entry the archive rules keep."""
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("node\n")
    (root / "etc" / "motd").write_text("welcome " * 1000)
    (root / "usr" / "bin" / "tool").write_bytes(
        os.urandom(1) * 0 + bytes(range(256)) * (big // 256)
    )
    (root / "usr" / "bin" / "tool").chmod(0o4755)
    rnd = __import__("random").Random(seed)
    (root / "usr" / "bin" / "blob").write_bytes(bytes(rnd.getrandbits(8) for _ in range(big)))
    os.symlink("../usr/bin/tool", root / "etc" / "tool-link")
    os.utime(root / "etc" / "tool-link", (1000, 1000), follow_symlinks=False)  # extraction drops it
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.hard")
    os.mkfifo(root / "etc" / "fifo")
    (root / "empty").mkdir()
    os.chown(root / "etc" / "motd", 1234, 5678)
    return root


def store_at(path: Path, **kw: int) -> ImageStore:
    return ImageStore(path, chunk_size=CHUNK, **kw)


def stream_bytes(store: ImageStore, name: str, version: str = "latest") -> bytes:
    m = store.resolve(name, version)
    assert m is not None
    return b"".join(store.chunk_file(c.id).read_bytes() for c in m.chunks)


def unpack_with_tools(stream: bytes, dest: Path) -> None:
    dest.mkdir()
    raw = subprocess.run(
        ["zstd", "-q", "-dc"], input=stream, capture_output=True, check=True
    ).stdout
    subprocess.run(["busybox", "tar", "-x", "-C", str(dest)], input=raw, check=True)


def test_same_tree_gives_same_chunks_and_round_trips(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    a = store_at(tmp_path / "a").import_tree("img", tree)
    b = store_at(tmp_path / "b", zstd_level=1, threads=1).import_tree("img", tree)
    assert [c.id for c in a.chunks] == [c.id for c in b.chunks]
    assert a.raw_size == b.raw_size and len(a.chunks) > 4
    out = tmp_path / "out"
    unpack_with_tools(stream_bytes(store_at(tmp_path / "a"), "img"), out)
    for rel in ("etc/hostname", "etc/motd", "usr/bin/tool", "usr/bin/blob"):
        assert (out / rel).read_bytes() == (tree / rel).read_bytes()
    assert os.readlink(out / "etc" / "tool-link") == "../usr/bin/tool"
    assert (out / "usr" / "bin" / "tool").stat().st_mode & 0o7777 == 0o4755
    assert os.stat(out / "etc" / "hostname").st_ino == os.stat(out / "etc" / "hostname.hard").st_ino
    assert (out / "etc" / "motd").stat().st_uid == 1234
    assert (out / "empty").is_dir()


def test_tar_and_zstd_tar_sources_give_the_directory_chunks(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    from_dir = store.import_tree("img", tree)
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tmp_path / "t.tar"), "."], check=True)
    subprocess.run(
        ["zstd", "-q", str(tmp_path / "t.tar"), "-o", str(tmp_path / "t.tar.zst")], check=True
    )
    for src in ("t.tar", "t.tar.zst"):
        m = store.import_source("img", tmp_path / src)
        assert [c.id for c in m.chunks] == [c.id for c in from_dir.chunks], src
        assert store.last_import.new_chunks == 0


def test_docker_save_layers_and_whiteouts(tmp_path: Path) -> None:
    def layer(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    image = tmp_path / "image.tar"
    with tarfile.open(image, "w") as t:
        docs = {
            "l1/layer.tar": layer({"etc/a": b"A", "etc/b": b"B", "opt/x/1": b"1"}),
            "l2/layer.tar": layer(
                {"etc/.wh.a": b"", "opt/x/.wh..wh..opq": b"", "opt/x/2": b"2", "etc/b": b"B2"}
            ),
            "manifest.json": json.dumps(
                [{"Config": "c.json", "Layers": ["l1/layer.tar", "l2/layer.tar"]}]
            ).encode(),
        }
        for name, data in docs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    store = store_at(tmp_path / "s")
    m = store.import_source("ctr", image)
    assert m.source == "container:image.tar"
    out = tmp_path / "out"
    unpack_with_tools(stream_bytes(store, "ctr"), out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "etc/b",
        "opt/x/2",
    ]
    assert (out / "etc" / "b").read_bytes() == b"B2"


def test_second_version_dedups_and_gc_reclaims_a_removed_one(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    v1 = store.import_tree("img", tree)
    n_files = len(list((tmp_path / "s" / "chunks").rglob("*.zst")))
    assert n_files == len(v1.chunk_ids())
    (tree / "zzz-new").write_bytes(os.urandom(2 * CHUNK))  # sorts last: only the tail changes
    v2 = store.import_tree("img", tree)
    stats = store.last_import
    assert (v1.version, v2.version) == ("1", "2")
    assert 0 < stats.new_chunks < stats.chunks // 2
    assert stats.dedup_ratio > 0.5
    assert store.index("img") == {"latest": "2", "versions": ["1", "2"], "next": 3}
    store.remove_version("img", "2")
    assert store.resolve("img").version == "1"  # type: ignore[union-attr]
    report = store.gc()
    assert report.chunks_removed == len(v2.chunk_ids() - v1.chunk_ids())
    assert len(list((tmp_path / "s" / "chunks").rglob("*.zst"))) == n_files


def test_rollback_and_pinned_versions(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    store.import_tree("img", tree)
    store.import_tree("img", tree, version="beta")
    assert store.resolve("img").version == "beta"  # type: ignore[union-attr]
    assert store.rollback("img") == "1"
    assert store.resolve("img").version == "1"  # type: ignore[union-attr]
    assert store.resolve("img", "beta") is not None
    with pytest.raises(ImageError):
        store.rollback("img")  # 1 is the oldest
    with pytest.raises(ImageError):
        store.import_tree("img", tree, version="beta")
    assert store.resolve("img", "nope") is None and store.resolve("../x") is None


def test_verify_quarantines_a_corrupt_chunk_and_reimport_heals(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    m = store.import_tree("img", tree)
    assert store.verify().ok
    victim = m.chunks[2].id
    path = store.chunk_file(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    report = store.verify()
    assert report.corrupt == [victim]
    assert report.broken_images == {"img/1": [victim]}
    assert store.chunk_path(victim) is None  # never served again
    assert (tmp_path / "s" / "quarantine" / f"{victim}.zst").exists()
    store.import_tree("img", tree)
    assert store.last_import.new_chunks == 1
    assert store.verify().ok
    assert len(read_chunk(store, victim)) == CHUNK


def test_kernel_files_are_content_addressed(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 1000)
    ref = store.store_file(tmp_path / "vmlinuz", alias="vmlinuz-6.1")
    again = store.store_file(tmp_path / "vmlinuz")
    assert ref.id == again.id and len(ref.id) == 32
    assert (
        store.file_path(ref.id)
        == store.file_path("vmlinuz-6.1")
        == tmp_path / "s" / "files" / ref.id
    )
    assert store.file_path("../../etc/passwd") is None and store.file_path("nope") is None
    xxh = subprocess.run(
        ["xxhsum", "-H2", str(tmp_path / "vmlinuz")], capture_output=True, text=True, check=True
    )
    assert xxh.stdout.split()[0] == ref.id


KILL_SCRIPT = """
import sys
from cwboot.control.images import ImageStore
ImageStore(sys.argv[1], chunk_size=16384, zstd_level=19, threads=1).import_tree("img", sys.argv[2])
"""


def test_kill_9_mid_import_leaves_no_visible_version(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(8):
        (tree / f"f{i}").write_bytes(os.urandom(1 << 20))
    store_dir = tmp_path / "s"
    store = store_at(store_dir)
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "x").write_text("x")
    store.import_tree("other", tmp_path / "small")
    chunks_before = sorted(p.name for p in (store_dir / "chunks").rglob("*.zst"))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(store_dir), str(tree)],
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 60
        while not list((store_dir / "tmp").glob("import-*/*.zst")):
            assert proc.poll() is None, "import finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fresh = ImageStore(store_dir)
    assert fresh.names() == ["other"]
    assert fresh.resolve("img") is None
    assert sorted(p.name for p in (store_dir / "chunks").rglob("*.zst")) == chunks_before
    report = fresh.gc()
    assert report.tmp_removed == 1
    assert list((store_dir / "tmp").iterdir()) == []
    assert fresh.resolve("other") is not None and fresh.verify().ok


def test_gc_leaves_a_running_import_alone(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    with store._import_dir() as work:
        (work / "x.zst").write_bytes(b"staged")
        with pytest.raises(ImageError, match="import is running"):
            store.gc(wait=False)
        assert (work / "x.zst").exists()
    assert store.gc(wait=False).tmp_removed == 0  # the import cleaned up after itself


def test_sync_objects_mirrors_versions_into_image_objects(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    store.import_tree("img", tree)
    store.import_tree("img", tree)
    store.rollback("img")

    async def main() -> dict:  # type: ignore[type-arg]
        db = EmbeddedStore(tmp_path / "store.sqlite3")
        try:
            objects = Objects(db)
            await store.sync_objects(objects)
            first = await objects.get("image", "img")
            await store.sync_objects(objects)  # idempotent
            assert (await objects.get("image", "img"))["last_modified"] == first["last_modified"]
            return first
        finally:
            await db.aclose()

    doc = trio.run(main)
    assert doc["latest"] == "1"
    assert [v["version"] for v in doc["versions"]] == ["1", "2"]
    assert doc["versions"][0]["manifest"] == "/images/img/1/manifest"
    assert doc["versions"][0]["raw_size"] > 0
