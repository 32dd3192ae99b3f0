"""Rootfs verification for simulated nodes: every chunk checked, decoding only when asked.

A chunk's id is the xxh3-128 of its *raw* block (cwboot.protocol.manifest), so
proving a frame right means decompressing it once. Doing that for every node
of a thousand-node storm would make the client, not the server, the
bottleneck. So verification has two levels:

* ``FrameDigests.prove(chunk, frame)``: decompress the zstd frame, check its
  raw size and ``xxh3_128(raw) == chunk.id``, and remember
  ``xxh3_128(frame)`` (the digest of the *compressed* bytes) for that id.
  The harness proves every chunk of the image once, from a reference fetch
  before the storm.
* every node then hashes the compressed bytes it receives, as they arrive
  (``StreamVerifier``, fed straight from the socket buffer: nothing is kept),
  and compares with the proven digest: a frame with the same xxh3-128 as a
  frame proven to decode to the right block is the right frame. xxh3 runs at
  memory speed, so every chunk of every node is verified for almost nothing.

With ``decode=True`` a node instead keeps each frame and proves it itself
(what mount_rootfs does on a real node).
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash
import zstandard

from cwboot.protocol.manifest import Chunk, Manifest


class ChunkMismatch(Exception):
    """A received frame does not verify against its chunk id."""


class FrameDigests:
    """chunk id -> xxh3-128 of its proven compressed frame."""

    def __init__(self) -> None:
        self.digests: dict[str, bytes] = {}
        self._dctx = zstandard.ZstdDecompressor()

    def prove(self, chunk: Chunk, frame: bytes) -> bytes:
        """Decompress and check one frame against its id; remember and return the frame's digest."""
        try:
            raw = self._dctx.decompress(frame, max_output_size=chunk.raw_size)
        except zstandard.ZstdError as exc:
            raise ChunkMismatch(f"chunk {chunk.id}: not a zstd frame ({exc})") from None
        if len(raw) != chunk.raw_size:
            raise ChunkMismatch(
                f"chunk {chunk.id}: {len(raw)} raw bytes, manifest says {chunk.raw_size}"
            )
        if xxhash.xxh3_128_hexdigest(raw) != chunk.id:
            raise ChunkMismatch(
                f"chunk {chunk.id}: raw bytes hash to {xxhash.xxh3_128_hexdigest(raw)}"
            )
        digest = xxhash.xxh3_128_digest(frame)
        self.digests[chunk.id] = digest
        return digest

    def proven(self, manifest: Manifest) -> bool:
        return all(c.id in self.digests for c in manifest.chunks)


class StreamVerifier:
    """Verifies a run of frames (a whole stream or one chunk) as the bytes arrive.

    ``feed`` takes any split of the bytes; chunk boundaries come from the
    manifest. ``verified`` counts whole chunks checked; ``done`` is True when
    every expected chunk has been seen.
    """

    def __init__(
        self, chunks: Sequence[Chunk], digests: FrameDigests, *, decode: bool = False
    ) -> None:
        self.chunks = chunks
        self.digests = digests
        self.decode = decode
        self.verified = 0
        self._index = 0
        self._left = chunks[0].compressed_size if chunks else 0
        self._hasher = xxhash.xxh3_128()
        self._frame = bytearray()

    @property
    def done(self) -> bool:
        return self._index >= len(self.chunks)

    def feed(self, view: memoryview) -> None:
        while view:
            if self.done:
                raise ChunkMismatch(f"{len(view)} bytes past the last chunk")
            take = min(self._left, len(view))
            piece = view[:take]
            if self.decode:
                self._frame += piece
            else:
                self._hasher.update(piece)
            self._left -= take
            view = view[take:]
            if self._left == 0:
                self._finish_chunk()

    def _finish_chunk(self) -> None:
        chunk = self.chunks[self._index]
        if self.decode:
            self.digests.prove(chunk, bytes(self._frame))
            self._frame.clear()
        else:
            expected = self.digests.digests.get(chunk.id)
            got = self._hasher.digest()
            if expected is None:
                raise ChunkMismatch(f"chunk {chunk.id}: no proven digest (reference fetch missing)")
            if got != expected:
                raise ChunkMismatch(
                    f"chunk {chunk.id}: frame digest {got.hex()} != proven {expected.hex()}"
                )
            self._hasher.reset()
        self.verified += 1
        self._index += 1
        if not self.done:
            self._left = self.chunks[self._index].compressed_size
