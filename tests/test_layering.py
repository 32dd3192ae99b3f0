"""DESIGN.md's layering rules, checked on the source: imports only point down.

protocol cores are sans-IO (no trio, no socket); policy is pure; services hold
sockets but no knowledge of the API/CLI; the control plane does not reach up
into the API/CLI. cwboot.control.objects is the shared, pure schema of objects,
so the lower layers may import it (and nothing else of control).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "cwboot"

IO_MODULES = {"trio", "socket", "asyncio", "selectors", "select", "anyio"}
UPPER = {"cwboot.api", "cwboot.cli", "cwboot.head"}

# layer -> (forbidden module prefixes, allowed cwboot.control modules or None for all)
RULES = {
    "protocol": (IO_MODULES | UPPER | {"cwboot.policy", "cwboot.services", "cwboot.control"}, set()),
    "policy": (IO_MODULES | UPPER | {"cwboot.services", "cwboot.control"}, {"cwboot.control.objects"}),
    "services": (UPPER | {"cwboot.control"}, {"cwboot.control.objects"}),
    "control": (UPPER, None),
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(layer: str) -> list[str]:
    forbidden, allowed = RULES[layer]
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in imports_of(path):
            if allowed and any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(RULES))
def test_imports_point_down(layer: str) -> None:
    assert violations(layer) == []


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom cwboot.services import dhcp\n")
    assert imports_of(bad) == {"trio", "cwboot.services"}
