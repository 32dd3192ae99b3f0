"""What a read transfer sends: fbtftp's response shape, and the root-folder rules.

A :class:`ResponseSource` has ``read(n)`` (sequential; fewer than ``n`` bytes
only at the end), ``size()`` (None when unknown) and ``close()``. Sources here:
bytes held in memory (generated content), a regular file under the root, and
a netascii wrapper (RFC 1350 / RFC 764: LF -> CR LF, CR -> CR NUL).

Path safety (:func:`safe_relative_path_untrusted`, :func:`open_in_root_untrusted`):
the name a peer sends can never reach a file outside the root. Refused with
ERROR 2: absolute paths, ``..`` / ``.`` / empty components, backslashes, NUL and
control characters, names longer than 255 bytes; after resolving, a path
(e.g. through a symlink) that lands outside the root; anything that is not a
regular file. Missing files are ERROR 1.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from cwboot.protocol.tftp._wire import OPCODE_BLOCK, BadPacket, ErrorCode, Opcode

MAX_NAME_BYTES = 255
# ContentCache defaults: files up to this size are read once and shared...
CACHE_MAX_FILE_BYTES = 8 * 2**20
# ...and the cache holds at most this much (least recently used out first).
CACHE_MAX_BYTES = 32 * 2**20
# Prebuilt DATA datagrams per content for at most this many blksizes (a copy of
# the content each): a peer picks any blksize from 8 to 65464, and more
# variants would multiply the memory a cached file takes.
MAX_PREBUILT_BLKSIZES = 3

# Debian's `ipxe` package: served when the root does not hold them.
DEBIAN_IPXE_LOADERS: Mapping[str, Path] = {
    name: Path("/usr/lib/ipxe") / name for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi")
}


class ResponseSource(Protocol):
    def read(self, n: int) -> bytes: ...

    def size(self) -> int | None: ...

    def close(self) -> None: ...


class SharedContent:
    """Bytes served by many transfers at once (a loader 1,000 nodes fetch in a storm).

    The DATA datagrams of an octet transfer depend only on the content and the
    blksize (block numbers wrap the same way for every transfer), so they are
    built once per blksize, on first use, and shared: a transfer then sends
    ready-made datagrams instead of reading, slicing and packing per packet.
    Only the first MAX_PREBUILT_BLKSIZES blksizes asked for are prebuilt;
    transfers with another blksize slice the shared bytes per block.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._datagrams: dict[int, list[bytes]] = {}

    def datagrams(self, blksize: int) -> list[bytes] | None:
        """DATA datagrams 1 .. size // blksize + 1 (index = block - 1; the last one is short).

        None when MAX_PREBUILT_BLKSIZES other blksizes are already prebuilt.
        """
        built = self._datagrams.get(blksize)
        if built is None:
            if len(self._datagrams) >= MAX_PREBUILT_BLKSIZES:
                return None
            data, pack = self.data, OPCODE_BLOCK.pack
            built = [
                pack(Opcode.DATA, (i + 1) & 0xFFFF) + data[i * blksize : (i + 1) * blksize]
                for i in range(len(data) // blksize + 1)
            ]
            self._datagrams[blksize] = built
        return built


class BytesSource:
    """Content held in memory (an embedded iPXE script, a generated config, a cached file).

    ``content`` is the :class:`SharedContent` (ReadTransfer sends its prebuilt
    datagrams for octet transfers instead of calling :meth:`read`).
    """

    def __init__(self, content: bytes | SharedContent) -> None:
        self.content = content if isinstance(content, SharedContent) else SharedContent(content)
        self._offset = 0

    def read(self, n: int) -> bytes:
        chunk = self.content.data[self._offset : self._offset + n]
        self._offset += len(chunk)
        return chunk

    def size(self) -> int | None:
        return len(self.content.data)

    def close(self) -> None:
        self.content = _EMPTY


_EMPTY = SharedContent(b"")


class ContentCache:
    """Regular files read once and shared by every transfer of them, keyed by file identity.

    The key is (device, inode, size, mtime, ctime) from fstat of the file just
    opened, so path checks still run on every request and a replaced or
    rewritten file is read afresh. Files over ``max_file_bytes``, and files
    that fail to read here, are served with pread per block as before (a read
    error then ends that transfer, not the open). Least recently used files
    leave first once the cache holds more than ``max_bytes``.
    """

    def __init__(
        self, max_bytes: int = CACHE_MAX_BYTES, max_file_bytes: int = CACHE_MAX_FILE_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_file_bytes = min(max_file_bytes, max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._files: OrderedDict[tuple[int, ...], SharedContent] = OrderedDict()

    def source(self, fd: int, info: os.stat_result) -> ResponseSource:
        """A source for the open regular file ``fd``; takes ownership of ``fd``."""
        if info.st_size > self.max_file_bytes:
            return FileSource(fd, info.st_size)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        content = self._files.get(key)
        if content is not None:
            self._files.move_to_end(key)
            self.hits += 1
            os.close(fd)
            return BytesSource(content)
        reader = FileSource(fd, info.st_size)
        try:
            data = reader.read(info.st_size)
        except OSError:
            return FileSource(fd, info.st_size)  # fails again in the transfer, and is counted there
        reader.close()
        self.misses += 1
        content = SharedContent(data)
        if len(data) == info.st_size:  # not truncated while being read
            self._files[key] = content
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, old = self._files.popitem(last=False)
                self.bytes -= len(old.data)
        return BytesSource(content)


class FileSource:
    """An open regular file; reads with pread so several sources can share nothing."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._offset = 0

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0 and self._offset < self._size:
            chunk = os.pread(self._fd, n, self._offset)
            if not chunk:  # truncated under us: end the file here
                self._size = self._offset
                break
            parts.append(chunk)
            self._offset += len(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def size(self) -> int | None:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class NetasciiSource:
    """Translate an octet source to netascii on the fly; the size is then unknown."""

    def __init__(self, inner: ResponseSource) -> None:
        self._inner = inner
        self._pending = b""
        self._eof = False

    def read(self, n: int) -> bytes:
        while len(self._pending) < n and not self._eof:
            raw = self._inner.read(max(n, 4096))
            self._eof = not raw
            # CR first, so the CR of a translated LF is not doubled.
            self._pending += raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        chunk, self._pending = self._pending[:n], self._pending[n:]
        return chunk

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        self._inner.close()


def safe_relative_path_untrusted(filename: str) -> tuple[str, ...]:
    """Split a requested name into path components, or raise BadPacket (ERROR 2)."""
    if not filename:
        raise BadPacket("empty_filename", ErrorCode.FILE_NOT_FOUND, "empty file name")
    if len(filename) > MAX_NAME_BYTES:
        raise BadPacket("filename_too_long", ErrorCode.ACCESS_VIOLATION, "file name too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename):
        raise BadPacket("filename_control_char", ErrorCode.ACCESS_VIOLATION, "bad file name")
    if "\\" in filename:
        raise BadPacket("filename_backslash", ErrorCode.ACCESS_VIOLATION, "bad file name")
    if filename.startswith("/"):
        raise BadPacket("filename_absolute", ErrorCode.ACCESS_VIOLATION, "absolute path refused")
    parts = tuple(filename.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise BadPacket("filename_traversal", ErrorCode.ACCESS_VIOLATION, "bad path component")
    return parts


def _open_regular_untrusted(
    path: Path, root: Path, cache: ContentCache | None = None
) -> ResponseSource:
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise BadPacket("file_not_found", ErrorCode.FILE_NOT_FOUND, "file not found") from None
    except (OSError, RuntimeError):  # symlink loop, permission, name too long
        raise BadPacket("file_unreadable", ErrorCode.ACCESS_VIOLATION, "access violation") from None
    if not real.is_relative_to(root):
        raise BadPacket("path_escapes_root", ErrorCode.ACCESS_VIOLATION, "access violation")
    try:
        # O_NOFOLLOW on the resolved path: a symlink swapped in after resolve()
        # is refused; O_NONBLOCK so a FIFO cannot stall the open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise BadPacket("file_unreadable", ErrorCode.ACCESS_VIOLATION, "access violation") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise BadPacket("not_a_regular_file", ErrorCode.ACCESS_VIOLATION, "not a regular file")
    if cache is not None:
        return cache.source(fd, info)
    return FileSource(fd, info.st_size)


def open_in_root_untrusted(
    root: Path,
    filename: str,
    defaults: Mapping[str, Path] = DEBIAN_IPXE_LOADERS,
    cache: ContentCache | None = None,
) -> ResponseSource:
    """Open ``filename`` under ``root``; fall back to ``defaults`` (by exact name).

    Defaults are trusted paths chosen by the operator (Debian's iPXE loaders),
    used only when the root lacks the name. With a ``cache``, the content of
    a small file is shared with every other transfer of the same file.
    """
    parts = safe_relative_path_untrusted(filename)
    real_root = root.resolve()
    try:
        return _open_regular_untrusted(real_root.joinpath(*parts), real_root, cache)
    except BadPacket as exc:
        fallback = defaults.get(filename)
        if exc.code != ErrorCode.FILE_NOT_FOUND or fallback is None:
            raise
    return _open_regular_untrusted(fallback, fallback.resolve().parent, cache)
