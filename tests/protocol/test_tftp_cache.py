"""ContentCache: small files read once and shared by every transfer of them, never served stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cwboot.protocol.tftp import (
    BadPacket,
    BytesSource,
    ContentCache,
    FileSource,
    open_in_root_untrusted,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "loader").write_bytes(b"L" * 70_000)
    (root / "big").write_bytes(b"B" * 5000)
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret")
    return root


def read_all(source: object) -> bytes:
    assert isinstance(source, (BytesSource, FileSource))
    out = source.read(1 << 20)
    source.close()
    return out


def test_one_file_is_read_once_and_shared(root: Path) -> None:
    cache = ContentCache()
    first = open_in_root_untrusted(root, "loader", {}, cache)
    second = open_in_root_untrusted(root, "loader", {}, cache)
    assert isinstance(first, BytesSource) and isinstance(second, BytesSource)
    assert first.content is second.content
    assert (cache.misses, cache.hits, cache.bytes) == (1, 1, 70_000)
    assert read_all(first) == read_all(second) == b"L" * 70_000


def test_a_rewritten_or_replaced_file_is_read_again(root: Path) -> None:
    cache = ContentCache()
    assert read_all(open_in_root_untrusted(root, "loader", {}, cache)) == b"L" * 70_000
    path = root / "loader"
    path.write_bytes(b"new content")  # same inode, new size and mtime
    assert read_all(open_in_root_untrusted(root, "loader", {}, cache)) == b"new content"
    replacement = root / "loader.tmp"
    replacement.write_bytes(b"other content")
    os.replace(replacement, path)  # new inode
    assert read_all(open_in_root_untrusted(root, "loader", {}, cache)) == b"other content"
    assert cache.hits == 0 and cache.misses == 3


def test_path_checks_still_run_for_a_cached_file(root: Path) -> None:
    cache = ContentCache()
    open_in_root_untrusted(root, "loader", {}, cache).close()
    with pytest.raises(BadPacket) as refused:
        open_in_root_untrusted(root, "../root/loader", {}, cache)
    assert refused.value.reason == "filename_traversal"
    with pytest.raises(BadPacket) as escaped:
        open_in_root_untrusted(root, "escape", {}, cache)
    assert escaped.value.reason == "path_escapes_root"


def test_large_files_are_streamed_and_the_cache_stays_bounded(root: Path) -> None:
    cache = ContentCache(max_bytes=100_000, max_file_bytes=4000)
    big = open_in_root_untrusted(root, "big", {}, cache)
    assert isinstance(big, FileSource) and read_all(big) == b"B" * 5000
    for i in range(5):
        (root / f"f{i}").write_bytes(bytes([i]) * 3000)
        assert read_all(open_in_root_untrusted(root, f"f{i}", {}, cache)) == bytes([i]) * 3000
    assert cache.bytes == 15_000
    small = ContentCache(max_bytes=7000, max_file_bytes=4000)
    for i in range(5):
        open_in_root_untrusted(root, f"f{i}", {}, small).close()
    assert small.bytes == 6000  # the two most recently used
    assert isinstance(open_in_root_untrusted(root, "f4", {}, small), BytesSource)
    assert small.hits == 1


def test_defaults_are_cached_too(root: Path, tmp_path: Path) -> None:
    loader = tmp_path / "ipxe" / "undionly.kpxe"
    loader.parent.mkdir()
    loader.write_bytes(b"PXE loader")
    cache = ContentCache()
    for _ in range(3):
        source = open_in_root_untrusted(root, "undionly.kpxe", {"undionly.kpxe": loader}, cache)
        assert read_all(source) == b"PXE loader"
    assert (cache.misses, cache.hits) == (1, 2)
