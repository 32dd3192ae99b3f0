"""The image store: determinism, dedup, atomic publish under kill -9, verify, rollback, gc.

Round trips go through the real `zstd` and busybox `tar` binaries, the tools the
initramfs uses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from cwboot.control.images import ImageError, ImageStore, UnsafeArchive, read_chunk
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


# -- untrusted archives: nothing may land outside the import's staging folder

# the staging tree is <store>/tmp/import-<id>/tree: four '..' from it is tmp_path with the store at tmp_path/"s"
UP = "../../../../"


def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, b""


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def docker_save(path: Path, layers: list[list[tuple[tarfile.TarInfo, bytes]]]) -> Path:
    names = [f"l{i}/layer.tar" for i in range(len(layers))]
    docs = [reg(n, tar_bytes(members)) for n, members in zip(names, layers, strict=True)]
    docs.append(reg("manifest.json", json.dumps([{"Config": "c.json", "Layers": names}]).encode()))
    path.write_bytes(tar_bytes(docs))
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the store with a file an escaping archive would overwrite or delete."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim").write_bytes(b"original")
    (out / "victim").chmod(0o600)
    return out


def assert_untouched(tmp_path: Path, outside: Path, store: ImageStore) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"original"
    assert (outside / "victim").stat().st_mode & 0o7777 == 0o600
    assert (outside / "victim").stat().st_nlink == 1
    assert outside.stat().st_mode & 0o7777 == 0o755
    assert not (tmp_path / "sentinel").exists()
    assert store.names() == [] and store.resolve("img") is None  # no half image
    assert list((tmp_path / "s" / "tmp").iterdir()) == []  # staging cleaned


ESCAPES: dict[str, tuple[Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]], str]] = {
    "dotdot": (lambda out: [reg(f"{UP}sentinel")], "'..' component"),
    "dotdot-inside": (lambda out: [directory("etc"), reg(f"etc/{UP}../sentinel")], "'..'"),
    "absolute": (lambda out: [reg(str(out.parent / "sentinel"))], "absolute path"),
    "absolute-overwrite": (lambda out: [reg(str(out / "victim"), b"pwned")], "absolute path"),
    "symlink-dir-then-through": (
        lambda out: [link("evil", str(out)), reg("evil/victim", b"pwned")],
        "goes through the symlink evil",
    ),
    "relative-symlink-then-through": (
        lambda out: [link("evil", f"{UP}outside"), reg("evil/new", b"pwned")],
        "symlink evil",
    ),
    "nested-symlink-then-dir": (
        lambda out: [directory("a"), link("a/b", str(out)), directory("a/b/c", 0o777)],
        "symlink a/b",
    ),
    "hardlink-absolute": (
        lambda out: [link("hl", str(out / "victim"), tarfile.LNKTYPE), reg("hl", b"pwned")],
        "absolute path",
    ),
    "hardlink-dotdot": (
        lambda out: [link("hl", f"{UP}outside/victim", tarfile.LNKTYPE)],
        "'..' component",
    ),
    "hardlink-through-symlink": (
        lambda out: [link("evil", str(out)), link("hl", "evil/victim", tarfile.LNKTYPE)],
        "symlink evil",
    ),
    "hardlink-to-nothing": (
        lambda out: [link("hl", "not/there", tarfile.LNKTYPE)],
        "not a file extracted before it",
    ),
    "symlink-replacing-an-extracted-dir": (
        # tarfile sets directory modes after everything: through 'd' if it became a symlink
        lambda out: [directory("d", 0o777), reg("d/f"), link("d", str(out))],
        "replaces a directory",
    ),
}


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_a_tar_that_escapes_is_refused_and_touches_nothing(
    tmp_path: Path, outside: Path, kind: str
) -> None:
    members, message = ESCAPES[kind]
    src = tmp_path / "evil.tar"
    src.write_bytes(tar_bytes(members(outside)))
    store = store_at(tmp_path / "s")
    with pytest.raises(UnsafeArchive, match=message) as caught:
        store.import_source("img", src)
    assert "evil.tar" in str(caught.value) and "import aborted" in str(caught.value)
    assert_untouched(tmp_path, outside, store)


CONTAINER_ESCAPES: dict[str, tuple[Callable[[Path], list[list[tuple[tarfile.TarInfo, bytes]]]], str]] = {
    "layer-dotdot": (lambda out: [[reg("etc/a"), reg(f"{UP}sentinel")]], "'..'"),
    "layer-symlink-then-file": (
        lambda out: [[link("etc", str(out))], [reg("etc/victim", b"pwned")]],
        "symlink etc",
    ),
    "whiteout-through-symlink": (
        lambda out: [[link("etc", str(out))], [reg("etc/.wh.victim", b"")]],
        "symlink etc",
    ),
    "opaque-whiteout-through-symlink": (
        lambda out: [[link("opt", str(out))], [reg("opt/.wh..wh..opq", b"")]],
        "symlink opt",
    ),
    "whiteout-of-dotdot": (lambda out: [[reg("a")], [reg(".wh...", b"")]], "'..'"),
}


@pytest.mark.parametrize("kind", list(CONTAINER_ESCAPES))
def test_a_docker_save_that_escapes_is_refused_and_touches_nothing(
    tmp_path: Path, outside: Path, kind: str
) -> None:
    layers, message = CONTAINER_ESCAPES[kind]
    src = docker_save(tmp_path / "evil.tar", layers(outside))
    store = store_at(tmp_path / "s")
    with pytest.raises(UnsafeArchive, match=message):
        store.import_source("img", src)
    assert_untouched(tmp_path, outside, store)


def test_a_docker_save_whose_outer_archive_escapes_is_refused(tmp_path: Path, outside: Path) -> None:
    src = tmp_path / "evil.tar"
    manifest = json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()
    src.write_bytes(
        tar_bytes([reg("manifest.json", manifest), reg("l/layer.tar", tar_bytes([reg("a")])),
                   reg(f"{UP}sentinel")])  # fmt: skip
    )
    store = store_at(tmp_path / "s")
    with pytest.raises(UnsafeArchive, match="'..'"):
        store.import_source("img", src)
    assert_untouched(tmp_path, outside, store)
    layer_link = tmp_path / "link.tar"
    layer_link.write_bytes(
        tar_bytes([reg("manifest.json", manifest), link("l/layer.tar", str(tmp_path / "t.tar"))])
    )
    (tmp_path / "t.tar").write_bytes(tar_bytes([reg("etc/x")]))
    with pytest.raises(UnsafeArchive, match="not a file inside the archive"):
        store.import_source("img", layer_link)
    assert_untouched(tmp_path, outside, store)


def test_tar_command_archives_with_escaping_names_are_refused(
    tmp_path: Path, outside: Path
) -> None:
    """What GNU tar writes with -P (absolute names, '..' kept) and with -r (a member through a symlink)."""
    store = store_at(tmp_path / "s")
    src = tmp_path / "src"
    (src / "evil").mkdir(parents=True)
    (src / "evil" / "planted").write_text("pwned")
    cases = {
        "dotdot.tar": (["-P", "--transform", f"s,^,{UP},", "-C", str(src), "evil/planted"], "'..'"),
        "abs.tar": (["-P", str(outside / "planted")], "absolute path"),
    }
    (outside / "planted").write_text("pwned")
    for name, (args, _) in cases.items():
        subprocess.run(["tar", "-cf", str(tmp_path / name), *args], check=True, capture_output=True)
    (outside / "planted").unlink()
    # an archive where 'evil' is a symlink out, then a member under 'evil/' appended with -r
    (tmp_path / "a").mkdir()
    os.symlink(outside, tmp_path / "a" / "evil")
    subprocess.run(["tar", "-cf", str(tmp_path / "through.tar"), "-C", str(tmp_path / "a"), "evil"], check=True)
    subprocess.run(["tar", "-rf", str(tmp_path / "through.tar"), "-C", str(src), "evil/planted"], check=True)
    cases["through.tar"] = ([], "symlink evil")
    for name, (_, message) in cases.items():
        with pytest.raises(UnsafeArchive, match=message):
            store.import_source("img", tmp_path / name)
        assert_untouched(tmp_path, outside, store)
        assert not (outside / "planted").exists() and not (src.parent / "sentinel").exists()


def test_replacing_a_symlink_never_writes_through_it(tmp_path: Path, outside: Path) -> None:
    """A later member with a symlink's name replaces the symlink (tar's behaviour), not its target."""
    src = tmp_path / "t.tar"
    src.write_bytes(
        tar_bytes([link("victim", str(outside / "victim")), reg("victim", b"new"),
                   link("d", str(outside)), directory("d", 0o777), reg("d/f", b"f"),
                   reg("h"), link("hl", "h", tarfile.LNKTYPE), reg("hl", b"not shared")])  # fmt: skip
    )
    store = store_at(tmp_path / "s")
    store.import_source("img", src)
    assert (outside / "victim").read_bytes() == b"original"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert outside.stat().st_mode & 0o7777 == 0o755
    out = tmp_path / "out"
    unpack_with_tools(stream_bytes(store, "img"), out)
    assert (out / "victim").read_bytes() == b"new" and not (out / "victim").is_symlink()
    assert (out / "d").is_dir() and not (out / "d").is_symlink()
    assert (out / "d").stat().st_mode & 0o7777 == 0o777
    assert (out / "h").read_bytes() == b"x" and (out / "hl").read_bytes() == b"not shared"


def make_rootfs(root: Path) -> Path:
    """What a real root filesystem holds that a careless filter would strip."""
    make_tree(root)
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(5000))
    (root / "bin" / "busybox").chmod(0o755)
    os.symlink("/bin/busybox", root / "usr" / "bin" / "foo")  # absolute inside the image
    os.symlink("/", root / "usr" / "bin" / "rootlink")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "var").mkdir()
    (root / "var" / "mail").mkdir()
    (root / "var" / "mail").chmod(0o2775)
    os.chown(root / "var" / "mail", 0, 8)
    (root / "usr" / "bin" / "sgid").write_bytes(b"s")
    (root / "usr" / "bin" / "sgid").chmod(0o2711)
    os.link(root / "bin" / "busybox", root / "bin" / "sh")
    (root / "etc" / "shadow").write_text("root:*:1::::::\n")
    (root / "etc" / "shadow").chmod(0o640)
    os.chown(root / "etc" / "shadow", 0, 42)
    return root


@pytest.mark.parametrize("maker", ["tar-command", "tarfile-module", "docker-save"])
def test_a_legitimate_rootfs_archive_imports_like_its_directory(tmp_path: Path, maker: str) -> None:
    tree = make_rootfs(tmp_path / "tree")
    store = store_at(tmp_path / "s")
    from_dir = store.import_tree("img", tree)
    src = tmp_path / "rootfs.tar"
    if maker == "tar-command":
        subprocess.run(["tar", "--numeric-owner", "-C", str(tree), "-cf", str(src), "."], check=True)
    else:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as t:
            t.add(tree, arcname=".")
        if maker == "tarfile-module":
            src.write_bytes(layer.getvalue())
        else:
            # a lower layer the rootfs layer replaces (usr: symlink -> dir) and whites out (etc/old)
            base = tar_bytes([reg("etc/old", b"lower layer"), link("usr", "/nowhere")])
            src.write_bytes(tar_bytes([
                reg("a/layer.tar", base), reg("b/layer.tar", layer.getvalue()),
                reg("c/layer.tar", tar_bytes([reg("etc/.wh.old", b"")])),
                reg("manifest.json", json.dumps(
                    [{"Layers": ["a/layer.tar", "b/layer.tar", "c/layer.tar"]}]).encode()),
            ]))  # fmt: skip
    m = store.import_source("img", src)
    assert [c.id for c in m.chunks] == [c.id for c in from_dir.chunks]
    assert store.last_import.new_chunks == 0
    out = tmp_path / "out"
    unpack_with_tools(stream_bytes(store, "img"), out)
    assert os.readlink(out / "usr" / "bin" / "foo") == "/bin/busybox"
    assert os.readlink(out / "usr" / "bin" / "rootlink") == "/"
    assert (out / "usr" / "bin" / "tool").stat().st_mode & 0o7777 == 0o4755
    assert (out / "usr" / "bin" / "sgid").stat().st_mode & 0o7777 == 0o2711
    assert (out / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (out / "var" / "mail").stat().st_mode & 0o7777 == 0o2775
    assert (out / "etc" / "shadow").stat().st_gid == 42
    assert os.stat(out / "bin" / "sh").st_ino == os.stat(out / "bin" / "busybox").st_ino


def test_hard_linked_symlinks_and_device_nodes_are_kept(tmp_path: Path) -> None:
    """GNU tar hard-links a symlink's second name; a directory import sees two symlinks."""
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    os.symlink("/bin/busybox", tree / "ls")
    os.link(tree / "ls", tree / "ls2", follow_symlinks=False)
    os.mknod(tree / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    store = store_at(tmp_path / "s")
    from_dir = store.import_tree("img", tree)
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tmp_path / "t.tar"), "."], check=True)
    with tarfile.open(tmp_path / "t.tar") as t:
        assert t.getmember("./ls2").islnk()  # the case this test is about
    m = store.import_source("img", tmp_path / "t.tar")
    assert [c.id for c in m.chunks] == [c.id for c in from_dir.chunks]
    with tarfile.open(fileobj=io.BytesIO(zstd_decompress(stream_bytes(store, "img")))) as t:
        assert t.getmember("ls2").issym() and t.getmember("ls2").linkname == "/bin/busybox"
        assert t.getmember("dev/null").ischr() and t.getmember("dev/null").devminor == 3


def zstd_decompress(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-dc"], input=data, capture_output=True, check=True).stdout


def test_the_staging_folder_is_private(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    with store._import_dir() as work:
        assert work.stat().st_mode & 0o777 == 0o700


def test_a_rollback_by_another_process_is_seen_within_one_mtime_tick(tmp_path: Path) -> None:
    """The HTTP engine's store caches index.json; a coarse clock can give two writes one mtime."""
    tree = make_tree(tmp_path / "tree")
    writer = store_at(tmp_path / "s")
    writer.import_tree("img", tree)
    writer.import_tree("img", tree)
    reader = store_at(tmp_path / "s")
    assert reader.resolve("img").version == "2"  # type: ignore[union-attr]
    index = tmp_path / "s" / "images" / "img" / "index.json"
    tick = index.stat().st_mtime_ns
    writer.rollback("img")
    os.utime(index, ns=(tick, tick))
    assert reader.resolve("img").version == "1"  # type: ignore[union-attr]


def test_every_frame_carries_zstds_content_checksum(tmp_path: Path) -> None:
    """The initramfs relies on `zstd -dc` to catch a bit flip inside a frame: the flag must be set."""
    store = store_at(tmp_path / "s")
    m = store.import_tree("img", make_tree(tmp_path / "tree"))
    for c in m.chunks:
        frame = store.chunk_file(c.id).read_bytes()
        assert frame[:4] == b"\x28\xb5\x2f\xfd"
        assert frame[4] & 0x04, c.id  # Frame_Header_Descriptor bit 2: Content_Checksum_flag (RFC 8878 3.1.1.1.1)
    first = store.chunk_file(m.chunks[0].id)
    listing = subprocess.run(["zstd", "-lv", str(first)], capture_output=True, text=True, check=True)
    assert "Check: XXH64" in listing.stdout
    # flip a bit of the stored checksum: the real zstd refuses the frame
    bad = bytearray(first.read_bytes())
    bad[-1] ^= 0x01
    (tmp_path / "bad.zst").write_bytes(bytes(bad))
    tested = subprocess.run(["zstd", "-q", "-t", str(tmp_path / "bad.zst")], capture_output=True)
    assert tested.returncode != 0


def test_a_docker_save_with_zstd_compressed_layers(tmp_path: Path) -> None:
    """OCI allows tar+zstd layers; those are read as a stream (no seeking back)."""
    lower = tar_bytes([reg("etc/a", b"A"), reg("etc/gone", b"G")])
    upper = tar_bytes([reg("etc/.wh.gone", b""), reg("etc/b", b"B")])

    def zst(data: bytes) -> bytes:
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout

    src = tmp_path / "image.tar"
    src.write_bytes(tar_bytes([
        reg("l1/layer.tar", zst(lower)), reg("l2/layer.tar", zst(upper)),
        reg("manifest.json", json.dumps([{"Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode()),
    ]))  # fmt: skip
    store = store_at(tmp_path / "s")
    assert store.import_source("ctr", src).source == "container:image.tar"
    out = tmp_path / "out"
    unpack_with_tools(stream_bytes(store, "ctr"), out)
    assert sorted(p.name for p in (out / "etc").iterdir()) == ["a", "b"]
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(tar_bytes([
        reg("l1/layer.tar", zst(lower)[:-20]),
        reg("manifest.json", json.dumps([{"Layers": ["l1/layer.tar"]}]).encode()),
    ]))  # fmt: skip
    with pytest.raises(ImageError, match="cut.tar:l1/layer.tar"):
        store.import_source("ctr", truncated)
    assert list((tmp_path / "s" / "tmp").iterdir()) == []
