"""Build cwboot, with its Cython fast paths from ext/ when a compiler is available.

The build says out loud which flavour it produced: "Accelerated" (the Cython
extensions were compiled) or "Pure" (only the Python fallbacks). Set
CWBOOT_NO_EXTENSIONS=1 to force a pure build. Which backend is *loaded* at run
time is a separate, explicit choice: see cwboot.protocol.dhcp.backend.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# (module name, Cython source) for every native fast path.
EXTENSIONS = [
    ("cwboot.protocol.dhcp._wire_c", "ext/dhcp_wire.pyx"),
    ("cwboot.services._dhcp_loop_c", "ext/dhcp_loop.pyx"),
]


class ReportingBuildExt(build_ext):
    """build_ext that reports Accelerated/Pure instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "Pure"
            print(f"cwboot build: Pure (Cython extensions not built: {exc})", file=sys.stderr)
            return
        if self.extensions:  # ext_modules() already said "Pure" when it found none to build
            print("cwboot build: Accelerated (Cython extensions built)", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"cwboot build: could not build {ext.name}: {exc}", file=sys.stderr)
            raise


def ext_modules() -> list:
    if os.environ.get("CWBOOT_NO_EXTENSIONS") == "1":
        print("cwboot build: Pure (CWBOOT_NO_EXTENSIONS=1)", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("cwboot build: Pure (Cython is not installed)", file=sys.stderr)
        return []
    exts = [
        Extension(name, [src], extra_compile_args=["-O2"])
        for name, src in EXTENSIONS
        if os.path.exists(src)
    ]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(ext_modules=ext_modules(), cmdclass={"build_ext": ReportingBuildExt})
