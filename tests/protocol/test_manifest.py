"""Manifest format: round trips, offsets/slices, and hostile input raising only BadManifest."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwboot.protocol import manifest as mf
from cwboot.protocol.manifest import BadManifest, Chunk

ID = "0123456789abcdef0123456789abcdef"


def make(sizes: list[tuple[int, int]], chunk_size: int = 100) -> mf.Manifest:
    chunks = [Chunk(f"{i:032x}", raw, z) for i, (raw, z) in enumerate(sizes)]
    return mf.build("img", "1", chunk_size, chunks, created=5, source="dir:/x")


def test_json_round_trip_is_byte_identical() -> None:
    m = make([(100, 30), (100, 40), (7, 5)])
    again = mf.parse_untrusted(m.to_json())
    assert again == m
    assert again.to_json() == m.to_json()
    assert m.raw_size == 207 and m.compressed_size == 75
    assert m.compressed_offsets == (0, 30, 70, 75)


def test_text_rendering_lists_every_chunk() -> None:
    lines = make([(100, 30), (7, 5)]).to_text().decode().splitlines()
    assert "# compressed_size 35" in lines
    assert lines[-2:] == [f"{0:032x} 100 30", f"{1:032x} 7 5"]


def test_slices_cover_a_range_across_chunks() -> None:
    m = make([(100, 30), (100, 40), (7, 5)])
    pieces = [(c.id[-1], off, n) for c, off, n in m.slices(25, 72)]
    assert pieces == [("0", 25, 5), ("1", 0, 40), ("2", 0, 2)]
    assert list(m.slices(30, 30)) == []
    with pytest.raises(ValueError):
        list(m.slices(0, 76))


@given(st.lists(st.integers(1, 50), min_size=1, max_size=20), st.data())
def test_slices_always_sum_to_the_range(zsizes: list[int], data: st.DataObject) -> None:
    m = make([(100, z) for z in zsizes[:-1]] + [(1, zsizes[-1])])
    start = data.draw(st.integers(0, m.compressed_size))
    stop = data.draw(st.integers(start, m.compressed_size))
    pieces = list(m.slices(start, stop))
    assert sum(n for _, _, n in pieces) == stop - start
    assert all(0 <= off and off + n <= c.compressed_size for c, off, n in pieces)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other/1"),
        lambda d: d.update(name="../etc"),
        lambda d: d.update(version="latest"),
        lambda d: d.update(chunk_size=0),
        lambda d: d["chunks"].append(["zz", 1, 1]),
        lambda d: d["chunks"].insert(0, [ID, 5, 1]),  # short chunk before the last
        lambda d: d.update(raw_size=1),
        lambda d: d.update(chunks="nope"),
        lambda d: d.pop("name"),
    ],
)
def test_bad_manifests_are_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(make([(100, 30), (7, 5)]).to_json())
    mutate(doc)
    with pytest.raises(BadManifest):
        mf.parse_untrusted(json.dumps(doc).encode())


@given(st.binary(max_size=300))
def test_fuzz_parses_or_raises_bad_manifest(data: bytes) -> None:
    try:
        mf.parse_untrusted(data)
    except BadManifest:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=20,
    )
)
def test_fuzz_json_shapes_raise_only_bad_manifest(doc: object) -> None:
    base = json.loads(make([(100, 30), (7, 5)]).to_json())
    for key in ("chunks", "name", "chunk_size", "version"):
        bad = dict(base, **{key: doc})
        try:
            mf.parse_untrusted(json.dumps(bad).encode())
        except BadManifest:
            pass
