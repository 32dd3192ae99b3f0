"""The storm harness's parts on their own: what a simulated node sends, parses and verifies.

Each test feeds the real cwboot codec/renderer output (DHCP codec, iPXE
renderer, image store frames) to the simulated node's code, so a drift between
the two sides fails here before it fails a storm.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from cwboot.control.images import ImageStore
from cwboot.protocol import dhcp, ipxe
from cwboot.protocol.manifest import Chunk
from cwboot.sim import content, dhcp_client, ipxe_script
from cwboot.sim.http_client import HttpError, parse_response_head_untrusted
from cwboot.sim.node import mac_for
from cwboot.sim.rootfs import ChunkMismatch, FrameDigests, StreamVerifier
from cwboot.sim.storm import percentiles

spec = dhcp.spec


@pytest.mark.parametrize("phase", ["pxe", "ipxe"])
def test_requests_parse_with_the_server_codec(phase: str) -> None:
    mac = bytes.fromhex("525400000007")
    options = dhcp_client.firmware_options(phase, mac, dhcp_client.ARCH_EFI_X64)
    raw = dhcp_client.build_request_packet(
        spec.DHCPDISCOVER, mac, 0xABCD, bytes((127, 77, 0, 1)), options
    )
    packet = dhcp.parse_untrusted(raw)
    assert packet.op == spec.BOOTREQUEST and packet.message_type == spec.DHCPDISCOVER
    assert packet.mac == "52:54:00:00:00:07" and packet.xid == 0xABCD and packet.hops == 1
    assert packet.giaddr == bytes((127, 77, 0, 1))
    assert packet.options[spec.OPT_CLIENT_ARCH] == b"\x00\x07"
    assert packet.options[spec.OPT_VENDOR_CLASS].startswith(b"PXEClient:Arch:00007")
    assert len(packet.options[spec.OPT_CLIENT_UUID]) == 17
    assert (packet.options.get(spec.OPT_USER_CLASS) == b"iPXE") == (phase == "ipxe")


def test_follows_the_rendered_script() -> None:
    boot = ipxe.BootSpec(mac="52:54:00:00:00:01", node="n1", kernel="k1", initramfs="i1",
                         cmdline="console=ttyS0", image="rocky", version="3")  # fmt: skip
    heads = ["http://127.0.0.1:8081", "http://127.0.0.2:8081"]
    text = ipxe.render(boot, heads)
    spec_ = ipxe_script.follow(text, f"{heads[0]}/boot/ipxe/52-54-00-00-00-01", {})
    assert spec_.kernel == f"{heads[0]}/boot/kernel/k1"
    assert spec_.initrds == [f"{heads[0]}/boot/initramfs/i1"]
    assert "console=ttyS0" in spec_.cmdline
    assert ipxe_script.rootfs_urls(spec_.cmdline) == [f"{h}/images/rocky/3" for h in heads]
    assert ipxe_script.boot_heads(spec_.cmdline) == heads


def test_script_loops_and_settings() -> None:
    text = "#!ipxe\nset base http://h:1\n:again\nsleep 2\ngoto boot\n:boot\nkernel ${base}/k/${mac:hexhyp} a=b\nboot\n"
    spec_ = ipxe_script.follow(text, "http://h:1/s", ipxe_script.node_settings("aa:bb:cc:dd:ee:ff"))
    assert (
        spec_.kernel == "http://h:1/k/aa-bb-cc-dd-ee-ff"
        and spec_.cmdline == "a=b"
        and spec_.slept == 2
    )
    with pytest.raises(ipxe_script.ScriptError):
        ipxe_script.follow("#!ipxe\n:a\ngoto a\n", "http://h/", {})
    with pytest.raises(ipxe_script.ScriptError):
        ipxe_script.follow(ipxe.render_exit("aa:bb:cc:dd:ee:ff", "unknown"), "http://h/", {})


def test_boot_file_expansion_like_ipxe() -> None:
    url = "http://10.0.0.1:8081/boot/ipxe/${mac:hexhyp}"
    assert ipxe_script.expand(url, ipxe_script.node_settings(mac_for(258))) == (
        "http://10.0.0.1:8081/boot/ipxe/52-54-00-00-01-02"
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageStore, content.StormContent]:
    work = tmp_path_factory.mktemp("content")
    store = ImageStore(work / "images", chunk_size=256 * 1024)
    return store, content.prepare(
        store, work / "src", image="synthetic:1", kernel_mib=0.1, initramfs_mib=0.1
    )


def _frames(store: ImageStore, chunks: tuple[Chunk, ...]) -> list[bytes]:
    frames = []
    for chunk in chunks:
        path = store.chunk_path(chunk.id)
        assert path is not None
        frames.append(path.read_bytes())
    return frames


def test_verifier_accepts_the_stream_in_any_split(
    stored: tuple[ImageStore, content.StormContent],
) -> None:
    store, c = stored
    chunks = c.manifest.chunks
    assert len(chunks) >= 3
    stream = b"".join(_frames(store, chunks))
    digests = FrameDigests()
    decoded = StreamVerifier(chunks, digests, decode=True)
    for i in range(0, len(stream), 7777):
        decoded.feed(memoryview(stream)[i : i + 7777])
    assert decoded.done and decoded.verified == len(chunks) and digests.proven(c.manifest)
    cheap = StreamVerifier(chunks, digests)
    cheap.feed(memoryview(stream))
    assert cheap.done and cheap.verified == len(chunks)


def test_verifier_rejects_a_corrupt_frame(stored: tuple[ImageStore, content.StormContent]) -> None:
    store, c = stored
    frames = _frames(store, c.manifest.chunks)
    digests = FrameDigests()
    for chunk, frame in zip(c.manifest.chunks, frames, strict=True):
        digests.prove(chunk, frame)
    bad = bytearray(frames[1])
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(ChunkMismatch):
        StreamVerifier(c.manifest.chunks[1:2], digests).feed(memoryview(bytes(bad)))
    with pytest.raises(ChunkMismatch):
        FrameDigests().prove(c.manifest.chunks[1], bytes(bad))
    # A valid zstd frame of the wrong block fails the id check, not just the digest.
    other = zstandard.ZstdCompressor(write_checksum=True).compress(
        b"x" * c.manifest.chunks[1].raw_size
    )
    with pytest.raises(ChunkMismatch, match="hash"):
        FrameDigests().prove(c.manifest.chunks[1], other)


def test_response_head_parser() -> None:
    status, headers = parse_response_head_untrusted(
        b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nX: a\r\nx: b"
    )
    assert status == 503 and headers == {"retry-after": "2", "x": "a, b"}
    for junk in (
        b"",
        b"SSH-2.0-x",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 200 OK\r\nno colon",
        b"HTTP/1.1 200\r\n :x",
    ):
        with pytest.raises(HttpError):
            parse_response_head_untrusted(junk)


def test_percentiles_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {}


def test_synthetic_tree_is_deterministic(tmp_path: Path) -> None:
    a = content.synthetic_tree(tmp_path / "a", 1)
    b = content.synthetic_tree(tmp_path / "b", 1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
