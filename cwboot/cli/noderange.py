"""Node ranges in the hostlist style: ``n[0-99]``, ``n[0-3,7]``, ``rack[1-2]n[00-15]``, ``n1,n5``.

``expand_ranges`` turns one such expression into the list of names;
``fold_names`` does the reverse for compact output (``n0 n1 n2 n7`` ->
``n[0-2,7]``). A range whose first bound has a leading zero keeps that width
(``n[08-10]`` -> ``n08 n09 n10``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

# Refuse to expand an expression into more names than this.
MAX_NAMES = 1_000_000

_GROUP = re.compile(r"(\[[^\[\]]*\])")
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


class NodeRangeError(ValueError):
    """The expression is not a valid node range; the message says where."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _numbers(group: str, expr: str) -> list[str]:
    out: list[str] = []
    for item in group[1:-1].split(","):
        lo, sep, hi = item.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise NodeRangeError(f"{expr!r}: {item!r} is not a number or a range like 0-99")
        if not sep:
            out.append(lo)
            continue
        first, last = int(lo), int(hi)
        if last < first:
            raise NodeRangeError(f"{expr!r}: range {item!r} runs backwards")
        if last - first >= MAX_NAMES:
            raise NodeRangeError(f"{expr!r}: more than {MAX_NAMES} names")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(first, last + 1))
    return out


def expand_ranges(expr: str) -> list[str]:
    """``"n[0-2],m5"`` -> ``["n0", "n1", "n2", "m5"]`` (order kept, duplicates dropped)."""
    names: dict[str, None] = {}
    for part in _split_top_level(expr.strip()):
        part = part.strip()
        if not part:
            raise NodeRangeError(f"{expr!r}: empty name")
        pieces = _GROUP.split(part)
        literals = pieces[0::2]
        if any("[" in p or "]" in p for p in literals):
            raise NodeRangeError(f"{expr!r}: unbalanced brackets")
        choices = [[p] if i % 2 == 0 else _numbers(p, expr) for i, p in enumerate(pieces)]
        total = 1
        for c in choices:
            total *= len(c)
        if total + len(names) > MAX_NAMES:
            raise NodeRangeError(f"{expr!r}: more than {MAX_NAMES} names")
        for combo in itertools.product(*choices):
            names["".join(combo)] = None
    return list(names)


def expand_all(exprs: Iterable[str]) -> list[str]:
    """Expand several expressions into one list (order kept, duplicates dropped)."""
    names: dict[str, None] = {}
    for expr in exprs:
        names.update(dict.fromkeys(expand_ranges(expr)))
    return list(names)


def fold_names(names: Iterable[str]) -> str:
    """``["n0", "n1", "n2", "n7", "head"]`` -> ``"n[0-2,7],head"``."""
    groups: dict[tuple[str, int], list[int]] = {}
    plain: list[str] = []
    for name in names:
        m = _NUMBERED.match(name)
        if m is None:
            plain.append(name)
            continue
        prefix, digits = m.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        groups.setdefault((prefix, width), []).append(int(digits))
    out: list[str] = []
    for (prefix, width), numbers in groups.items():
        numbers = sorted(set(numbers))
        runs: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            a, b = str(start).zfill(width), str(prev).zfill(width)
            runs.append(a if start == prev else f"{a}-{b}")
            if n is not None:
                start = prev = n
        out.append(f"{prefix}{runs[0]}" if len(runs) == 1 and "-" not in runs[0] else f"{prefix}[{','.join(runs)}]")
    return ",".join(out + plain)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``n2`` before ``n10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)
