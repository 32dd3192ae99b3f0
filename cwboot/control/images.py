"""The on-disk image store: chunked zstd root filesystems, kernels and initramfs files.

Layout under ``config.images_dir`` (one filesystem, so every rename is atomic)::

    chunks/<id[:2]>/<id>.zst        one zstd frame per block, shared by every image (dedup)
    files/<id>                      kernels/initramfs files, raw, named by xxh3-128 of their bytes
    files/names/<alias>             optional alias -> id (one line)
    images/<name>/index.json        {"latest": v, "versions": [v, ...], "next": n}: what is published
    images/<name>/<version>.json    the manifest (cwboot.protocol.manifest JSON)
    quarantine/<id>.zst             chunks ``verify`` found corrupt: never served again
    tmp/<import>/                   an import in progress (its lock file is flock'ed while alive)
    lock                            imports hold it shared, ``gc`` exclusive

Import (``import_tree``/``import_tar``): the tree is written as the
deterministic tar stream of ``cwboot.protocol.manifest.ARCHIVE_RULES``, cut into
``chunk_size`` blocks; worker threads compress each block into an independent
zstd frame with content checksum and hash it (xxh3-128 of the raw block = the
chunk id). Chunks already in ``chunks/`` are not written again; new ones go to
the import's own ``tmp/`` folder (fsync'ed). Publishing renames the new chunks
into ``chunks/``, writes the manifest (temp + fsync + rename) and last the
index the same way: a version exists for clients only once ``index.json``
names it. A kill -9 at any point leaves at most a dead ``tmp/`` folder and,
if it struck during the chunk renames, chunks no manifest names; ``gc``
reclaims both.

The store's ``index.json`` files are the one source of truth for which
versions exist and which is latest: the HTTP engine resolves a boot config's
image through ``resolve`` (``manifest``, ``chunk_path``, ``file_path`` for the
bytes), so ``rollback`` and imports take effect for the next script served,
whether or not the API could be told. ``sync_objects`` mirrors the indexes
into the ``image`` objects (``versions``/``latest``) for the API, the CLI's
listings and the dashboard; nothing serves from that mirror, and the API
refuses client writes to those fields. A head re-syncs an image when
``index_stamps`` shows its index changed. Manifests are
immutable and cached; ``index.json`` is re-read when its inode or mtime
changes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import fcntl
import json
import os
import shutil
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import xxhash
import zstandard

from cwboot.config import Config
from cwboot.protocol import manifest as mf
from cwboot.protocol.manifest import Chunk, Manifest

Progress = Callable[[int, int], None]  # (bytes done, bytes expected)


class ImageError(Exception):
    """An image operation failed; the message says why (unknown image, bad source...)."""


@dataclass(frozen=True, slots=True)
class FileRef:
    id: str
    size: int
    alias: str = ""


@dataclass
class ImportStats:
    raw_bytes: int = 0
    compressed_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    seconds: float = 0.0

    @property
    def dedup_ratio(self) -> float:
        return 1.0 - self.new_chunks / self.chunks if self.chunks else 0.0


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # image "name/version" -> chunk ids it lost
    broken_images: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


@dataclass
class GcReport:
    chunks_removed: int = 0
    bytes_freed: int = 0
    tmp_removed: int = 0
    files_removed: int = 0


def chunk_id(raw: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(raw)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """temp file + fsync + rename + fsync(dir): readers see the old or the new bytes, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# -- the deterministic archive stream (rules: cwboot.protocol.manifest.ARCHIVE_RULES)


def _walk(root: Path) -> Iterator[tuple[Path, str]]:
    """Depth-first; a directory, then everything under it, then its next sibling; siblings by name bytes."""
    for name in sorted(os.listdir(root), key=os.fsencode):
        child = root / name
        yield child, name
        if stat.S_ISDIR(os.lstat(child).st_mode):
            for sub, arc in _walk(child):
                yield sub, f"{name}/{arc}"


def _normalized(tar: tarfile.TarFile, path: Path, arcname: str) -> tarfile.TarInfo | None:
    info = tar.gettarinfo(str(path), arcname)
    if info is None:  # socket
        return None
    info.uname = info.gname = ""
    # a symlink's own mtime is not kept by tar extraction (utime follows the link): 0 for all
    info.mtime = 0 if info.issym() else int(info.mtime)
    if info.isdir():
        info.name = arcname  # no trailing slash in GNU headers from gettarinfo anyway
    return info


class _BlockSink:
    """A write-only file object: cuts what tarfile writes into fixed blocks and hands them on."""

    def __init__(self, block_size: int, emit: Callable[[bytes], None]) -> None:
        self.block_size = block_size
        self.emit = emit
        self.buf = bytearray()
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.buf += data
        self.pos += len(data)
        while len(self.buf) >= self.block_size:
            self.emit(bytes(self.buf[: self.block_size]))
            del self.buf[: self.block_size]
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self.buf:
            self.emit(bytes(self.buf))
            self.buf.clear()


class _Claim:
    """The first worker to meet a new chunk id writes it; repeats wait for its size."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.size = 0


class _Import:
    """One import: compresses blocks in threads, stores new chunks in its tmp folder, keeps order."""

    def __init__(self, store: ImageStore, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self.pool = concurrent.futures.ThreadPoolExecutor(store.threads, thread_name_prefix="zstd")
        self.pending: collections.deque[concurrent.futures.Future[tuple[Chunk, bool]]] = (
            collections.deque()
        )
        self.chunks: list[Chunk] = []
        self.local = threading.local()
        self.stats = ImportStats()
        self.claims: dict[str, _Claim] = {}
        self.lock = threading.Lock()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self.local, "c", None)
        if c is None:
            c = zstandard.ZstdCompressor(
                level=self.store.zstd_level, write_checksum=True, write_content_size=True
            )
            self.local.c = c
        return c

    def _work(self, block: bytes) -> tuple[Chunk, bool]:
        cid = chunk_id(block)
        final = self.store.chunk_file(cid)
        with self.lock:
            claim = self.claims.get(cid)
            fresh = claim is None and not final.exists()
            if fresh:
                claim = self.claims[cid] = _Claim()
        if claim is None:  # stored by an earlier import
            return Chunk(cid, len(block), final.stat().st_size), False
        if not fresh:  # a repeat of a block of this import: wait for its first copy
            claim.done.wait()
            return Chunk(cid, len(block), claim.size), False
        try:
            frame = self._compressor().compress(block)
            tmp = self.workdir / f".{cid}.tmp"
            with open(tmp, "wb") as f:
                f.write(frame)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.workdir / f"{cid}.zst")
            claim.size = len(frame)
        finally:
            claim.done.set()
        return Chunk(cid, len(block), len(frame)), True

    def submit(self, block: bytes) -> None:
        self.pending.append(self.pool.submit(self._work, block))
        while len(self.pending) > 2 * self.store.threads:
            self._collect(self.pending.popleft())

    def _collect(self, fut: concurrent.futures.Future[tuple[Chunk, bool]]) -> None:
        chunk, fresh = fut.result()
        self.chunks.append(chunk)
        self.stats.chunks += 1
        self.stats.new_chunks += fresh
        self.stats.raw_bytes += chunk.raw_size
        self.stats.compressed_bytes += chunk.compressed_size

    def drain(self) -> list[Chunk]:
        while self.pending:
            self._collect(self.pending.popleft())
        self.pool.shutdown()
        return self.chunks


class ImageStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chunk_size: int = 1 << 20,
        zstd_level: int = 3,
        threads: int = 0,
    ) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.zstd_level = zstd_level
        self.threads = threads or os.cpu_count() or 1
        for sub in ("chunks", "files/names", "images", "quarantine", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "lock").touch(exist_ok=True)
        self._chunks_dir = str(self.root / "chunks")
        self._manifests: dict[tuple[str, str], Manifest] = {}
        self._indexes: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self.last_import = ImportStats()

    @classmethod
    def from_config(cls, config: Config) -> ImageStore:
        im = config.images
        return cls(
            config.images_dir,
            chunk_size=im.chunk_size,
            zstd_level=im.zstd_level,
            threads=im.threads,
        )

    # -- paths

    def chunk_file(self, cid: str) -> Path:
        return self.root / "chunks" / cid[:2] / f"{cid}.zst"

    def chunk_path(self, cid: str) -> Path | None:
        """The stored frame of a chunk, or None (unknown, malformed id, or quarantined)."""
        p = self.chunk_fspath(cid)
        return Path(p) if p is not None else None

    def chunk_fspath(self, cid: str) -> str | None:
        """``chunk_path`` as a plain string: the HTTP engine calls it once per chunk it
        streams, and building Path objects there was a measurable share of its CPU."""
        if not mf.CHUNK_ID_RE.match(cid):
            return None
        p = f"{self._chunks_dir}/{cid[:2]}/{cid}.zst"
        return p if os.path.exists(p) else None

    def file_path(self, ref: str) -> Path | None:
        """A stored kernel/initramfs by id or alias."""
        if mf.CHUNK_ID_RE.match(ref):
            p = self.root / "files" / ref
            return p if p.exists() else None
        if not mf.NAME_RE.match(ref):
            return None
        alias = self.root / "files" / "names" / ref
        try:
            cid = alias.read_text().strip()
        except FileNotFoundError:
            return None
        return self.file_path(cid) if mf.CHUNK_ID_RE.match(cid) else None

    # -- reading published images

    def names(self) -> list[str]:
        return sorted(
            p.name for p in (self.root / "images").iterdir() if (p / "index.json").exists()
        )

    def index(self, name: str) -> dict[str, Any]:
        """{"latest", "versions", "next"} of an image; an empty index if it has none."""
        path = self.root / "images" / name / "index.json"
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return {"latest": "", "versions": [], "next": 1}
        # Every write is a rename of a new file: a new inode even when two writes
        # share one coarse mtime tick (import then rollback by another process).
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._indexes.get(name)
        if cached and cached[0] == key:
            return cached[1]
        doc: dict[str, Any] = json.loads(path.read_bytes())
        self._indexes[name] = (key, doc)
        return doc

    def resolve(self, name: str, version: str = "latest") -> Manifest | None:
        """A published version (``latest``/"" for the index's latest) -> its manifest; None if none."""
        if not mf.NAME_RE.match(name):
            return None
        idx = self.index(name)
        if version in ("", "latest"):
            version = idx["latest"]
        if version not in idx["versions"]:
            return None
        return self.manifest(name, version)

    def manifest(self, name: str, version: str) -> Manifest:
        key = (name, version)
        m = self._manifests.get(key)
        if m is None:
            path = self.root / "images" / name / f"{version}.json"
            try:
                m = mf.parse_untrusted(path.read_bytes())
            except FileNotFoundError:
                raise ImageError(f"image {name} has no version {version}") from None
            self._manifests[key] = m
        return m

    def published(self) -> Iterator[Manifest]:
        for name in self.names():
            for v in self.index(name)["versions"]:
                yield self.manifest(name, v)

    # -- import

    @contextlib.contextmanager
    def _import_dir(self) -> Iterator[Path]:
        with open(self.root / "lock") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_SH)
            work = self.root / "tmp" / f"import-{uuid.uuid4().hex}"
            work.mkdir(mode=0o700)  # an archive's device nodes stay out of other users' reach
            # held while this import lives: gc treats an unlocked tmp folder as dead
            with open(work / "lock", "w") as alive:
                fcntl.flock(alive, fcntl.LOCK_EX)
                try:
                    yield work
                finally:
                    shutil.rmtree(work, ignore_errors=True)

    def import_tree(
        self,
        name: str,
        source: str | os.PathLike[str],
        *,
        version: str = "",
        progress: Progress | None = None,
        source_label: str = "",
    ) -> Manifest:
        """Import a directory tree as a new version (``version`` or the next number) and publish it."""
        mf.check_name(name)
        root = Path(source)
        if not root.is_dir():
            raise ImageError(f"{root} is not a directory")
        with self._import_dir() as work:
            return self._import_walk(
                name, root, work, version, progress, source_label or f"dir:{root}"
            )

    def _import_walk(
        self, name: str, root: Path, work: Path, version: str, progress: Progress | None, label: str
    ) -> Manifest:
        t0 = time.monotonic()
        entries = list(_walk(root))
        total = sum(st.st_size for p, _ in entries if stat.S_ISREG((st := os.lstat(p)).st_mode))
        job = _Import(self, work)
        sink = _BlockSink(self.chunk_size, job.submit)
        done = 0
        try:
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
                for path, arc in entries:
                    info = _normalized(tar, path, arc)
                    if info is None:
                        continue
                    if info.isreg():
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                        done += info.size
                        if progress:
                            progress(done, total)
                    else:
                        tar.addfile(info)
            sink.finish()
            chunks = job.drain()
        except BaseException:
            job.pool.shutdown(cancel_futures=True)
            raise
        if not chunks:
            raise ImageError("empty archive")
        stats = job.stats
        m = self._publish(name, version, chunks, work, label)
        stats.seconds = time.monotonic() - t0
        self.last_import = stats
        return m

    def import_tar(
        self,
        name: str,
        tar_path: str | os.PathLike[str],
        *,
        version: str = "",
        progress: Progress | None = None,
    ) -> Manifest:
        """Import a tar archive (plain/gz/bz2/xz/zstd) or a ``docker save``/OCI image tarball.

        The archive is unpacked into the import's tmp folder and imported as a
        tree, so a tar and the directory it came from give the same chunks.
        Archives are untrusted: a member that would land outside that folder
        (absolute or '..' names, paths through symlinks, hard links out) raises
        ``UnsafeArchive`` and nothing is published (``_RootfsFilter``).
        """
        mf.check_name(name)
        src = Path(tar_path)
        with self._import_dir() as work:
            tree = work / "tree"
            tree.mkdir()
            with _open_tar(src) as tar:
                members = tar.getnames()
            if "manifest.json" in members and not any(
                m.startswith(("etc/", "usr/", "bin/")) for m in members
            ):
                _unpack_container(src, tree, work)
                label = f"container:{src.name}"
            else:
                with _open_tar(src) as tar:
                    _extract_untrusted(tar, tree, src.name)
                label = f"tar:{src.name}"
            return self._import_walk(name, tree, work, version, progress, label)

    def import_source(
        self,
        name: str,
        source: str | os.PathLike[str],
        *,
        version: str = "",
        progress: Progress | None = None,
    ) -> Manifest:
        """A directory or a tar archive, whichever ``source`` is."""
        if Path(source).is_dir():
            return self.import_tree(name, source, version=version, progress=progress)
        return self.import_tar(name, source, version=version, progress=progress)

    def _publish(
        self, name: str, version: str, chunks: list[Chunk], work: Path, label: str
    ) -> Manifest:
        image_dir = self.root / "images" / name
        image_dir.mkdir(exist_ok=True)
        touched: set[Path] = set()
        for staged in work.glob("*.zst"):
            final = self.chunk_file(staged.stem)
            final.parent.mkdir(exist_ok=True)
            os.replace(staged, final)
            touched.add(final.parent)
        for d in touched:
            _fsync_dir(d)
        with self._index_lock(name):
            idx = dict(self.index(name))
            if not version:
                version = str(idx["next"])
                while version in idx["versions"]:
                    idx["next"] += 1
                    version = str(idx["next"])
            if version in idx["versions"]:
                raise ImageError(f"image {name} already has version {version}")
            m = mf.build(
                name, version, self.chunk_size, chunks, created=int(time.time()), source=label
            )
            _write_atomic(image_dir / f"{version}.json", m.to_json())
            versions = [*idx["versions"], version]
            nxt = idx["next"] + 1 if version == str(idx["next"]) else idx["next"]
            self._write_index(name, {"latest": version, "versions": versions, "next": nxt})
        return m

    @contextlib.contextmanager
    def _index_lock(self, name: str) -> Iterator[None]:
        (self.root / "images" / name).mkdir(exist_ok=True)
        with open(self.root / "images" / name / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            self._indexes.pop(name, None)
            yield

    def _write_index(self, name: str, doc: dict[str, Any]) -> None:
        _write_atomic(
            self.root / "images" / name / "index.json", json.dumps(doc, sort_keys=True).encode()
        )
        self._indexes.pop(name, None)

    # -- versions

    def rollback(self, name: str, version: str = "") -> str:
        """Make ``version`` (default: the one published before the current latest) the latest."""
        with self._index_lock(name):
            idx = dict(self.index(name))
            if not idx["versions"]:
                raise ImageError(f"no image named {name}")
            if not version:
                pos = idx["versions"].index(idx["latest"])
                if pos == 0:
                    raise ImageError(
                        f"image {name}: version {idx['latest']} is the oldest; nothing to roll back to"
                    )
                version = idx["versions"][pos - 1]
            if version not in idx["versions"]:
                raise ImageError(f"image {name} has no version {version}")
            idx["latest"] = version
            self._write_index(name, idx)
        return version

    def remove_version(self, name: str, version: str) -> None:
        """Unpublish a version (its chunks go at the next ``gc`` unless another version uses them)."""
        with self._index_lock(name):
            idx = dict(self.index(name))
            if version not in idx["versions"]:
                raise ImageError(f"image {name} has no version {version}")
            idx["versions"] = [v for v in idx["versions"] if v != version]
            if idx["latest"] == version:
                idx["latest"] = idx["versions"][-1] if idx["versions"] else ""
            self._write_index(name, idx)
        (self.root / "images" / name / f"{version}.json").unlink(missing_ok=True)
        self._manifests.pop((name, version), None)

    # -- kernels and initramfs files

    def store_file(self, path: str | os.PathLike[str], alias: str = "") -> FileRef:
        """Store a file by the xxh3-128 of its bytes (raw: iPXE fetches it as is); optional alias."""
        h = xxhash.xxh3_128()
        tmp = self.root / "tmp" / f"file-{uuid.uuid4().hex}"
        size = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                h.update(block)
                dst.write(block)
                size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        cid = h.hexdigest()
        os.replace(tmp, self.root / "files" / cid)
        _fsync_dir(self.root / "files")
        if alias:
            mf.check_name(alias)
            _write_atomic(self.root / "files" / "names" / alias, cid.encode() + b"\n")
        return FileRef(cid, size, alias)

    def files(self) -> list[FileRef]:
        aliases = {}
        for a in (self.root / "files" / "names").iterdir():
            if not a.name.startswith("."):
                aliases[a.read_text().strip()] = a.name
        return [
            FileRef(p.name, p.stat().st_size, aliases.get(p.name, ""))
            for p in sorted((self.root / "files").iterdir())
            if mf.CHUNK_ID_RE.match(p.name)
        ]

    # -- integrity and cleanup

    def verify(self, name: str = "", *, progress: Progress | None = None) -> VerifyReport:
        """Re-check every chunk of the published images (or of one image).

        A chunk whose frame fails zstd's checksum, whose raw bytes do not hash to
        its id, or whose size disagrees is moved to ``quarantine/``: the HTTP
        engine no longer finds it, so it is never served again.
        """
        report = VerifyReport()
        users: dict[str, list[str]] = collections.defaultdict(list)
        sizes: dict[str, int] = {}
        for m in self.published():
            if name and m.name != name:
                continue
            for c in m.chunks:
                users[c.id].append(f"{m.name}/{m.version}")
                sizes[c.id] = c.raw_size
        dctx = zstandard.ZstdDecompressor()
        for n, cid in enumerate(sorted(users)):
            path = self.chunk_file(cid)
            report.checked += 1
            try:
                frame = path.read_bytes()
            except FileNotFoundError:
                report.missing.append(cid)
            else:
                try:
                    raw = dctx.decompress(frame, max_output_size=sizes[cid])
                    good = len(raw) == sizes[cid] and chunk_id(raw) == cid
                except zstandard.ZstdError:
                    good = False
                if not good:
                    report.corrupt.append(cid)
                    os.replace(path, self.root / "quarantine" / path.name)
            if progress:
                progress(n + 1, len(users))
        for cid in report.corrupt + report.missing:
            for image in users[cid]:
                report.broken_images.setdefault(image, []).append(cid)
        for ref in self.files():
            if (
                not name
                and xxhash.xxh3_128_hexdigest((self.root / "files" / ref.id).read_bytes()) != ref.id
            ):
                report.corrupt.append(f"file:{ref.id}")
                os.replace(
                    self.root / "files" / ref.id, self.root / "quarantine" / f"file-{ref.id}"
                )
        return report

    def gc(self, *, keep_files: bool = True, wait: bool = True) -> GcReport:
        """Remove chunks no published manifest names and the tmp folders of dead imports.

        Waits for running imports (they hold the store lock shared), or with
        ``wait=False`` raises ImageError while one runs. Stray
        manifests (written, never named by an index) are removed too.
        """
        report = GcReport()
        with open(self.root / "lock") as lockf:
            try:
                fcntl.flock(lockf, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise ImageError("an import is running; try gc again when it ends") from None
            for work in (self.root / "tmp").iterdir():
                if not _is_alive(work):
                    if work.is_dir():
                        shutil.rmtree(work, ignore_errors=True)
                    else:
                        work.unlink(missing_ok=True)
                    report.tmp_removed += 1
            self._indexes.clear()
            live: set[str] = set()
            for name in self.names():
                idx = self.index(name)
                for v in idx["versions"]:
                    live |= self.manifest(name, v).chunk_ids()
                for p in (self.root / "images" / name).glob("*.json"):
                    if p.name != "index.json" and p.stem not in idx["versions"]:
                        p.unlink()
            for sub in (self.root / "chunks").iterdir():
                for p in sub.iterdir():
                    if p.stem not in live:
                        report.bytes_freed += p.stat().st_size
                        p.unlink()
                        report.chunks_removed += 1
            if not keep_files:
                referenced = {
                    p.read_text().strip() for p in (self.root / "files" / "names").iterdir()
                }
                for ref in self.files():
                    if ref.id not in referenced:
                        (self.root / "files" / ref.id).unlink()
                        report.files_removed += 1
        return report

    # -- mirror into the image objects

    def object_doc(self, name: str) -> dict[str, Any]:
        """The ``image`` object's managed fields for this image."""
        idx = self.index(name)
        versions = []
        for v in idx["versions"]:
            m = self.manifest(name, v)
            versions.append(
                {
                    "version": v,
                    "manifest": f"/images/{name}/{v}/manifest",
                    "raw_size": m.raw_size,
                    "compressed_size": m.compressed_size,
                    "chunks": len(m.chunks),
                    "chunk_size": m.chunk_size,
                    "created": m.created,
                    "source": m.source,
                }
            )
        return {"versions": versions, "latest": idx["latest"]}

    def index_stamps(self) -> dict[str, tuple[int, int]]:
        """(inode, mtime in ns) of every image's ``index.json``: one stat per image, so a head
        can poll it to notice changes made behind its back (the CLI writes the store
        directly). Every index write is a rename of a new file, so the inode changes even
        when two writes share one mtime tick."""
        stamps: dict[str, tuple[int, int]] = {}
        with os.scandir(self.root / "images") as entries:
            for entry in entries:
                try:
                    st = os.stat(os.path.join(entry.path, "index.json"))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                stamps[entry.name] = (st.st_ino, st.st_mtime_ns)
        return stamps

    async def sync_objects(self, objects: Any, names: list[str] | None = None) -> None:
        """Create/update the ``image`` objects (cwboot.control.repo.Objects) from the on-disk indexes."""
        from cwboot.control.objects import NotFound

        for name in names or self.names():
            doc = self.object_doc(name)
            try:
                current = await objects.get("image", name)
            except NotFound:
                await objects.create("image", {"name": name, **doc})
                continue
            if {k: current.get(k) for k in doc} != doc:
                await objects.update("image", name, doc)


def _is_alive(work: Path) -> bool:
    """An import's tmp folder is alive while its lock file is flock'ed by the importing process."""
    try:
        fd = os.open(work / "lock", os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _open_tar(path: Path, label: str = "") -> Iterator[tarfile.TarFile]:
    """A tar (plain/gz/bz2/xz, or zstd read as a stream); a corrupt or truncated
    archive, met at open or while reading it, raises ImageError naming ``label`` or the path."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
    try:
        with contextlib.ExitStack() as stack:
            if magic == b"\x28\xb5\x2f\xfd":
                compressed = stack.enter_context(open(path, "rb"))
                reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(compressed)
                tar = stack.enter_context(tarfile.open(fileobj=reader, mode="r|"))
            else:
                tar = stack.enter_context(tarfile.open(path, mode="r:*"))
            yield tar
    except (tarfile.TarError, zstandard.ZstdError) as exc:
        raise ImageError(f"{label or path}: unreadable archive ({exc})") from None


class UnsafeArchive(ImageError):
    """A tar/docker-save archive would write outside the import's staging tree; nothing was published."""


def _clean_member_path(archive: str, name: str, what: str) -> str:
    """A member name or hard-link target -> a relative path without '.'/'' parts ('' = the root).

    Absolute paths and '..' components are refused, not rewritten: an archive
    that carries them was not made from a root tree by ``tar -C root``.
    """
    if name.startswith("/"):
        raise UnsafeArchive(f"{archive}: {what} {name!r} is an absolute path; import aborted")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: {what} {name!r} has a '..' component; import aborted")
    return "/".join(parts)


def _lstat_inside(root: Path, rel: str, archive: str, member: str) -> os.stat_result | None:
    """lstat of ``root/rel`` after checking that every parent on the way is a real directory.

    Extracting through a symlink (``evil -> /etc`` then ``evil/passwd``) is how an
    archive escapes; the staging tree is ours alone (mode 0700), so what lstat
    sees here is what the extraction that follows meets.
    """
    cur = root
    parts = rel.split("/")
    for part in parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchive(
                f"{archive}: member {member!r} goes through the symlink "
                f"{cur.relative_to(root)}; import aborted"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(
                f"{archive}: member {member!r} goes through the non-directory "
                f"{cur.relative_to(root)}; import aborted"
            )
    try:
        return os.lstat(root / rel)
    except FileNotFoundError:
        return None


def _remove_inside(root: Path, rel: str, st: os.stat_result) -> None:
    """Remove what ``_lstat_inside`` found; never follows a symlink (rmtree is fd-based on Linux)."""
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(root / rel)
    else:
        os.unlink(root / rel)


class _RootfsFilter:
    """tarfile extraction filter for untrusted root filesystem archives (``extractall(filter=...)``).

    Why not the stdlib's: ``tar_filter`` clears setuid/setgid/sticky and
    group/other write bits (``/usr/bin/sudo``, ``/tmp`` need them) and silently
    strips a leading '/'; ``data_filter`` also refuses device nodes and absolute
    symlinks (``/usr/bin/foo -> /bin/busybox`` is normal inside an image); and
    both decide from ``os.path.realpath`` strings, which Python 3.11.7 gets
    wrong in known ways (CVE-2025-4517 and relatives, fixed in 3.11.13). This
    filter keeps everything a directory import keeps (modes, numeric owners,
    symlinks with any target, hard links, device nodes, FIFOs) and instead
    checks the staging tree itself, member by member (tarfile calls the filter
    just before extracting each one):

    * names and hard-link targets must be relative without '..' (refused);
    * no member is extracted through a symlink or a non-directory;
    * an existing entry at the member's path is removed first (tar's own
      behaviour), so nothing is written *through* an earlier symlink or into a
      hard-linked inode; replacing a directory this archive extracted is
      refused (tarfile sets directory modes at the end, through the path);
    * a hard link must name an entry already extracted (not a directory); a
      hard link to a symlink becomes a copy of that symlink (what a directory
      import of the same tree produces).

    Refusals raise ``UnsafeArchive``; the import is aborted and its staging
    folder removed. Device nodes are kept (ARCHIVE_RULES keep them for
    directory imports too); the staging folder is 0700, so no other local user
    can reach one while an import runs.
    """

    def __init__(self, root: Path, archive: str, *, skip_whiteouts: bool = False) -> None:
        self.root = root
        self.archive = archive
        self.skip_whiteouts = skip_whiteouts  # a docker layer's .wh.* entries were applied already
        self.dirs: set[str] = set()  # directories extracted by this archive

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        rel = _clean_member_path(self.archive, member.name, "member")
        if not rel:
            return None  # the root itself: its attributes are not part of an image
        if self.skip_whiteouts and rel.rpartition("/")[2].startswith(".wh."):
            return None
        existing = _lstat_inside(self.root, rel, self.archive, member.name)
        out = copy.copy(member)  # tarfile's own filters return a changed copy too
        out.name = rel
        if member.islnk():
            src = _clean_member_path(self.archive, member.linkname, f"hard link {member.name!r} to")
            target = _lstat_inside(self.root, src, self.archive, member.name) if src else None
            if target is None or stat.S_ISDIR(target.st_mode) or src == rel:
                raise UnsafeArchive(
                    f"{self.archive}: hard link {member.name!r} names {member.linkname!r}, "
                    "which is not a file extracted before it; import aborted"
                )
            if stat.S_ISLNK(target.st_mode):
                out.type, out.linkname = tarfile.SYMTYPE, os.readlink(self.root / src)
            else:
                out.linkname = src
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            if stat.S_ISDIR(existing.st_mode) and any(
                d == rel or d.startswith(rel + "/") for d in self.dirs
            ):
                raise UnsafeArchive(
                    f"{self.archive}: member {member.name!r} replaces a directory the same "
                    "archive extracted; import aborted"
                )
            _remove_inside(self.root, rel, existing)
        if member.isdir():
            self.dirs.add(rel)
        return out


def _extract_untrusted(
    tar: tarfile.TarFile, root: Path, archive: str, *, skip_whiteouts: bool = False
) -> None:
    """Unpack an archive from outside into ``root`` (see ``_RootfsFilter``); UnsafeArchive if it tries to escape."""
    rules = _RootfsFilter(root, archive, skip_whiteouts=skip_whiteouts)
    tar.extractall(root, numeric_owner=True, filter=rules)


def _inside(root: Path, rel: str, archive: str) -> Path:
    """``root/rel`` resolved, as long as it stays under root (docker-save links identical layers)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise UnsafeArchive(f"{archive}: {rel!r} is not a file inside the archive; import aborted")
    return path


def _unpack_container(src: Path, tree: Path, work: Path) -> None:
    """``docker save``/OCI tarball: apply its layers in order, honouring whiteouts (.wh.*)."""
    layers_dir = work / "layers"
    layers_dir.mkdir()
    with _open_tar(src) as tar:
        _extract_untrusted(tar, layers_dir, src.name)
    doc = json.loads(_inside(layers_dir, "manifest.json", src.name).read_bytes())
    if not isinstance(doc, list) or not doc or "Layers" not in doc[0]:
        raise ImageError(f"{src}: manifest.json is not a docker-save manifest")
    for layer in doc[0]["Layers"]:
        if not isinstance(layer, str):
            raise ImageError(f"{src}: manifest.json names a layer that is not a path")
        _apply_layer(_inside(layers_dir, layer, src.name), tree, f"{src.name}:{layer}")


def _apply_layer(layer: Path, tree: Path, label: str) -> None:
    """One layer over the tree: its whiteouts first (they hide lower layers only), then its entries.

    Whiteout targets are checked like member names: a whiteout never removes
    anything through a symlink an earlier layer made. Two passes over the
    archive, so a compressed (zstd: streamed, no seeking) layer works too.
    """
    with _open_tar(layer, label) as tar:
        for m in tar:
            rel = _clean_member_path(label, m.name, "member")
            parent, _, base = rel.rpartition("/")
            if base == ".wh..wh..opq":
                _lstat_inside(tree, rel, label, m.name)  # refuses a symlink on the way
                folder = tree / parent
                if folder.is_dir():  # a real directory: every parent was just checked
                    for child in folder.iterdir():
                        _remove_inside(tree, str(child.relative_to(tree)), os.lstat(child))
            elif base.startswith(".wh."):
                hidden = _clean_member_path(
                    label, f"{parent}/{base[4:]}" if parent else base[4:], f"whiteout {m.name!r} of"
                )
                st = _lstat_inside(tree, hidden, label, m.name) if hidden else None
                if st is not None:
                    _remove_inside(tree, hidden, st)
    with _open_tar(layer, label) as tar:
        _extract_untrusted(tar, tree, label, skip_whiteouts=True)


def read_chunk(store: ImageStore, cid: str) -> bytes:
    """The raw block of a chunk (decompressed, checked): for tools and tests."""
    path = store.chunk_path(cid)
    if path is None:
        raise ImageError(f"no chunk {cid}")
    return zstandard.ZstdDecompressor().decompress(path.read_bytes())
