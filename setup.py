"""Build the optional Cython extension of ``hotpath`` (metadata lives in pyproject.toml).

A missing Cython, a missing C compiler or a failed compile never fails the install: one
warning line is printed and ``hotpath`` falls back to its pure-Python twin.
Set ``FLASHGATE_HOTPATH_DEBUG=1`` to compile with Cython's bounds and wraparound checks.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FLASHGATE_HOTPATH_DEBUG", "") not in ("", "0")
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}
WARNING = "WARNING: hotpath native extension not built ({}); the pure-Python twin will be used"


def _warn(reason):
    print(WARNING.format(reason), file=sys.stderr)


def _extensions():
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    ext = Extension("hotpath._snapshot_c", ["hotpath/_snapshot_c.pyx"])
    try:
        return cythonize([ext], compiler_directives=DIRECTIVES, quiet=True)
    except Exception as exc:  # a Cython error must not fail the install
        _warn(f"cythonize failed: {exc}")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that turns any compiler failure into one warning line."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2", "/fp:precise"]
        else:
            # No FMA contraction: float answers must equal the pure-Python twin's.
            flags = ["-O3", "-ffp-contract=off"]
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:
            _warn(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"{ext.name}: {type(exc).__name__}: {exc}")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
