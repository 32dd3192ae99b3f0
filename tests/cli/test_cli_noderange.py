"""Node ranges: expansion, folding back, and the mistakes they refuse."""

import pytest

from cwboot.cli.noderange import NodeRangeError, expand_all, expand_ranges, fold_names, natural_key


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("n5", ["n5"]),
        ("n[0-3]", ["n0", "n1", "n2", "n3"]),
        ("n[0-3,7]", ["n0", "n1", "n2", "n3", "n7"]),
        ("n[0-1],m5", ["n0", "n1", "m5"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("r[1-2]n[0-1]", ["r1n0", "r1n1", "r2n0", "r2n1"]),
        ("n[1,1,2]", ["n1", "n2"]),
        ("5d1c0ffee", ["5d1c0ffee"]),
    ],
)
def test_expand(expr: str, names: list[str]) -> None:
    assert expand_ranges(expr) == names


def test_expand_a_hundred() -> None:
    assert expand_ranges("n[0-99]") == [f"n{i}" for i in range(100)]
    assert expand_all(["n[0-2]", "n1", "m0"]) == ["n0", "n1", "n2", "m0"]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("n[3-1]", "backwards"),
        ("n[a-b]", "not a number"),
        ("n[0-3", "unbalanced"),
        ("n0-3]", "unbalanced"),
        ("n[0-1],,m", "empty name"),
        ("n[0-9999999]", "more than"),
        ("a[0-999]b[0-999]c[0-9]", "more than"),
    ],
)
def test_refused(expr: str, message: str) -> None:
    with pytest.raises(NodeRangeError, match=message):
        expand_ranges(expr)


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["n0", "n1", "n2", "n7"], "n[0-2,7]"),
        (["n5"], "n5"),
        (["n3", "n1"], "n[1,3]"),
        (["n08", "n09", "n10"], "n[08-09],n10"),
        (["head", "n0", "n1"], "n[0-1],head"),
    ],
)
def test_fold(names: list[str], folded: str) -> None:
    assert fold_names(names) == folded


def test_fold_then_expand_round_trips() -> None:
    names = [f"n{i}" for i in range(0, 1000, 3)] + ["m1", "m2"]
    assert sorted(expand_ranges(fold_names(names)), key=natural_key) == sorted(names, key=natural_key)


def test_natural_order() -> None:
    assert sorted(["n10", "n2", "n1", "m3"], key=natural_key) == ["m3", "n1", "n2", "n10"]
