"""Which DHCP codec is loaded is explicit, and CPython's test run must not silently fall back."""

import os
import platform
import subprocess
import sys

import pytest

from cwboot.protocol import dhcp


def test_backend_is_cython_on_cpython_unless_python_was_asked_for() -> None:
    # The python-zstandard rule: CI on CPython fails if the fallback was loaded by accident.
    if platform.python_implementation() != "CPython":
        pytest.skip("only CPython builds the extension")
    if os.environ.get("CWBOOT_DHCP_BACKEND") == "python":
        assert dhcp.backend == "python"
    else:
        assert dhcp.backend == "cython", (
            "the Cython codec did not load: build it with setup.py build_ext"
        )


@pytest.mark.parametrize(
    ("choice", "expected"), [("python", "python"), ("cython", "cython"), ("auto", "cython")]
)
def test_env_var_selects_the_backend(choice: str, expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from cwboot.protocol import dhcp; print(dhcp.backend)"],
        env={**os.environ, "CWBOOT_DHCP_BACKEND": choice},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected


def test_unknown_backend_name_is_refused() -> None:
    with pytest.raises(ImportError, match="expected one of auto, cython, python"):
        dhcp.load_backend("fast")


def test_cython_requested_but_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cwboot.protocol.dhcp._wire_c", None)  # import now fails
    with pytest.raises(ImportError, match="not built"):
        dhcp.load_backend("cython")
    assert dhcp.load_backend("auto")[0] == "python"


def test_the_service_loop_follows_the_backend() -> None:
    """The Cython codec comes with the native receive loop (ext/dhcp_loop.pyx); the Python one
    with the Python loop. A Cython build without the loop would be a silent fallback too."""
    out = subprocess.run(
        [sys.executable, "-c", "from cwboot.services import dhcp; print(dhcp.LOOP)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ("native" if dhcp.backend == "cython" else "python")
    out = subprocess.run(
        [sys.executable, "-c", "from cwboot.services import dhcp; print(dhcp.LOOP)"],
        env={**os.environ, "CWBOOT_DHCP_BACKEND": "python"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "python"
