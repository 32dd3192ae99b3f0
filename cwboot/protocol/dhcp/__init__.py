"""DHCPv4 wire codec (sans-IO): ``parse_untrusted`` bytes -> DhcpPacket, ``build_reply`` -> bytes.

Two backends implement the rules in ``_spec`` with identical results: the
Cython ``_wire_c`` (built from ext/dhcp_wire.pyx) and the pure-Python
``_wire_py``. Which one is loaded is explicit, never a silent accident:

``CWBOOT_DHCP_BACKEND``
    ``auto`` (default): Cython when it is importable, else pure Python;
    ``cython``: Cython or ImportError; ``python``: pure Python.

Both also provide ``FastResponder``, the one-call respond path for the common
requests (rules in ``_spec``, "The respond fast path"), filled with reply
templates by cwboot.policy.dhcp.FastPath.

``backend`` names the loaded one (``"cython"`` or ``"python"``). The test
suite fails on CPython when ``backend`` is not ``"cython"`` unless
``CWBOOT_DHCP_BACKEND=python`` was set on purpose.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from cwboot.protocol.dhcp import _spec
from cwboot.protocol.dhcp._spec import BadPacket, DhcpPacket

__all__ = [
    "BadPacket",
    "DhcpPacket",
    "FastResponder",
    "backend",
    "build_reply",
    "encode_options",
    "load_backend",
    "parse_untrusted",
    "spec",
]

spec = _spec
BACKENDS = ("auto", "cython", "python")


def load_backend(choice: str) -> tuple[str, ModuleType]:
    """The codec module for ``choice`` (one of BACKENDS) and its name."""
    if choice not in BACKENDS:
        raise ImportError(f"CWBOOT_DHCP_BACKEND={choice!r}: expected one of {', '.join(BACKENDS)}")
    if choice in ("auto", "cython"):
        try:
            wire_c = importlib.import_module("cwboot.protocol.dhcp._wire_c")
        except ImportError:
            if choice == "cython":
                raise ImportError(
                    "CWBOOT_DHCP_BACKEND=cython but the extension cwboot.protocol.dhcp._wire_c is "
                    "not built (run: python setup.py build_ext --inplace)"
                ) from None
        else:
            return "cython", wire_c
    return "python", importlib.import_module("cwboot.protocol.dhcp._wire_py")


backend, _impl = load_backend(os.environ.get("CWBOOT_DHCP_BACKEND", "auto") or "auto")
parse_untrusted = _impl.parse_untrusted
build_reply = _impl.build_reply
encode_options = _impl.encode_options
FastResponder = _impl.FastResponder
