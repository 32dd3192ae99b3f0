"""Image manifests: the sans-IO description of a published image version.

An image version is a deterministic tar stream (rules in ``ARCHIVE_RULES``)
cut into fixed-size blocks; every block is compressed on its own into one zstd
frame carrying zstd's content checksum, and named by the xxh3-128 of the raw
block (32 lowercase hex digits, xxhash's canonical big-endian form, the same
string ``xxhsum -H2`` prints). Concatenated in manifest order the frames are
one valid zstd stream whose decompression is the tar stream.

Two renderings of one manifest, both produced here (one source of truth):

* JSON (``to_json``/``parse_untrusted``): what the store keeps and
  ``/images/{name}/{version}/manifest`` serves. Keys are sorted, no
  whitespace, so equal manifests are equal bytes and the ETag is their hash.
* text (``to_text``): ``/images/{name}/{version}/manifest.txt`` for the
  initramfs shell: ``#``-comment header lines ``# key value`` then one line
  per chunk ``<id> <raw_size> <compressed_size>``.

Offsets are not stored: chunk ``i`` starts at the sum of the sizes before it
(``Manifest.compressed_offsets``), so a manifest cannot disagree with itself.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

FORMAT = "cwboot-image/1"

# Rules of the deterministic archive stream (cwboot.control.images follows them):
ARCHIVE_RULES = """\
GNU tar format (busybox tar and GNU tar both read it); depth-first walk, each
directory before its entries and the entries of a directory sorted by their
name's bytes; paths relative without a leading './'; directories, regular
files, symlinks, hard links (second and later paths of one inode), character
and block devices and FIFOs; sockets are skipped. Kept: mode, numeric uid/gid,
integer mtime (0 for symlinks: extraction does not keep theirs), size, link
target, device numbers. Dropped: user/group names, atime/ctime, extended
attributes. Ends with tar's two zero blocks padded to a 10240-byte record.
"""

CHUNK_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Image names follow object names; versions are short, URL- and iPXE-safe tokens.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024


class BadManifest(ValueError):
    """A manifest (from disk or the network) is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    raw_size: int
    compressed_size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    chunk_size: int
    chunks: tuple[Chunk, ...]
    created: int = 0
    # What was imported ("dir:/srv/rootfs", "tar:rootfs.tar"): informative only.
    source: str = ""
    _zoffsets: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets = (0, *accumulate(c.compressed_size for c in self.chunks))
        object.__setattr__(self, "_zoffsets", offsets)

    @property
    def raw_size(self) -> int:
        return sum(c.raw_size for c in self.chunks)

    @property
    def compressed_size(self) -> int:
        return self._zoffsets[-1]

    @property
    def compressed_offsets(self) -> tuple[int, ...]:
        """Start of every chunk in the concatenated stream, plus the total at the end."""
        return self._zoffsets

    def chunk_ids(self) -> set[str]:
        return {c.id for c in self.chunks}

    def slices(self, start: int, stop: int) -> Iterator[tuple[Chunk, int, int]]:
        """Byte range [start, stop) of the stream -> (chunk, offset in its frame, length) pieces."""
        if not 0 <= start <= stop <= self.compressed_size:
            raise ValueError(f"range [{start}, {stop}) outside 0..{self.compressed_size}")
        i = bisect_right(self._zoffsets, start) - 1
        pos = start
        while pos < stop:
            chunk = self.chunks[i]
            inner = pos - self._zoffsets[i]
            length = min(chunk.compressed_size - inner, stop - pos)
            if length > 0:
                yield chunk, inner, length
            pos += length
            i += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "source": self.source,
            "chunk_size": self.chunk_size,
            "raw_size": self.raw_size,
            "compressed_size": self.compressed_size,
            "chunks": [[c.id, c.raw_size, c.compressed_size] for c in self.chunks],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def to_text(self) -> bytes:
        head = [
            f"# format {FORMAT}",
            f"# name {self.name}",
            f"# version {self.version}",
            f"# chunk_size {self.chunk_size}",
            f"# raw_size {self.raw_size}",
            f"# compressed_size {self.compressed_size}",
            f"# chunks {len(self.chunks)}",
        ]
        lines = head + [f"{c.id} {c.raw_size} {c.compressed_size}" for c in self.chunks]
        return ("\n".join(lines) + "\n").encode()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadManifest(f"bad image name {name!r}: letters, digits, '.', '_', '-'; at most 63")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version) or version == "latest":
        raise BadManifest(
            f"bad image version {version!r}: letters, digits, '.', '_', '-'; not 'latest'"
        )
    return version


def build(
    name: str,
    version: str,
    chunk_size: int,
    chunks: Sequence[Chunk],
    *,
    created: int = 0,
    source: str = "",
) -> Manifest:
    """A checked Manifest; every chunk but the last must be exactly ``chunk_size`` raw bytes."""
    check_name(name)
    check_version(version)
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise BadManifest(f"chunk_size {chunk_size} outside 1..{MAX_CHUNK_SIZE}")
    for i, c in enumerate(chunks):
        if not CHUNK_ID_RE.match(c.id):
            raise BadManifest(f"chunk {i}: id {c.id!r} is not 32 lowercase hex digits")
        last = i == len(chunks) - 1
        if c.raw_size > chunk_size or c.raw_size <= 0 or (not last and c.raw_size != chunk_size):
            raise BadManifest(
                f"chunk {i}: raw size {c.raw_size} breaks the fixed chunk size {chunk_size}"
            )
        if c.compressed_size <= 0:
            raise BadManifest(f"chunk {i}: compressed size {c.compressed_size}")
    return Manifest(name, version, chunk_size, tuple(chunks), created=created, source=source)


def parse_untrusted(data: bytes) -> Manifest:
    """JSON bytes -> Manifest; raises only BadManifest."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadManifest("manifest larger than 64 MiB")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadManifest(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadManifest(f"not a {FORMAT} manifest")
    try:
        chunks = [Chunk(str(i), int(r), int(z)) for i, r, z in doc["chunks"]]
        m = build(
            doc["name"],
            doc["version"],
            int(doc["chunk_size"]),
            chunks,
            created=int(doc.get("created", 0)),
            source=str(doc.get("source", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BadManifest):
            raise
        raise BadManifest(f"bad field: {exc!r}") from None
    for key in ("raw_size", "compressed_size"):
        if key in doc and doc[key] != getattr(m, key):
            raise BadManifest(f"{key} {doc[key]!r} disagrees with the chunks ({getattr(m, key)})")
    return m
