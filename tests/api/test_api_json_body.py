"""The JSON body decoder: depth measured without parsing agrees with the parsed document."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwboot.api.json_body import BadJson, decode_json_untrusted, json_depth

tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\/ax\n\u00e9\u2028'), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=30,
)


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(json_values, st.booleans())
def test_depth_matches_the_parsed_document(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert json_depth(body) == reference_depth(value)


@pytest.mark.parametrize(
    ("body", "depth"),
    [(b"5", 0), (b'"[[["', 0), (b'["\\\\"]', 1), (b'["\\"[["]', 1), (b'["\\\\\\"[", []]', 2), (b"[[[]]]", 3)],
)
def test_depth_examples(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth


def test_a_million_levels_are_measured_without_recursion() -> None:
    assert json_depth(b"[" * 1_000_000) == 1_000_000
    with pytest.raises(BadJson, match="nested 1000000 levels"):
        decode_json_untrusted(b"[" * 1_000_000 + b"]" * 1_000_000, 32)


@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_parses_or_raises_bad_json(body: bytes) -> None:
    try:
        decode_json_untrusted(body, 8)
    except BadJson:
        pass
