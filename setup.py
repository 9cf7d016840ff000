"""Build the optional Cython extension of ``hotpath`` and ship the top-level resource
directories inside the package (metadata lives in pyproject.toml).

A missing Cython, a missing C compiler or a failed compile never fails the install: one
warning line is printed and ``hotpath`` falls back to its pure-Python twin.
Set ``FLASHGATE_HOTPATH_DEBUG=1`` to compile with Cython's bounds and wraparound checks.

``lua/`` and ``migrations/`` stay at the top level of the repository (the documented
layout); ``build_py`` copies them into the wheel as ``gateway/_resources/lua/**`` and
``gateway/_resources/migrations/*.sql``, and lists them as sources so an sdist carries
them too. ``gateway.core.resources`` finds either copy.
"""

import glob
import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

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


# Top-level directory -> glob patterns (relative to it) shipped under gateway/_resources/<directory>/.
RESOURCES = {
    "lua": ("*.lua", "lib/*.lua"),  # lib/ holds the files pulled in by `--!include name` lines
    "migrations": ("*.sql",),
}
RESOURCES_TARGET = os.path.join("gateway", "_resources")


def _resource_files():
    """Paths relative to setup.py ("lua/lib/common.lua", ...) of every resource file, sorted."""
    found = set()
    for directory, patterns in RESOURCES.items():
        files = [path for pattern in patterns for path in glob.glob(os.path.join(directory, pattern))
                 if os.path.isfile(path)]
        if not files:
            raise SystemExit(f"setup.py: no {directory}/ files next to setup.py; cannot ship them in the package")
        found.update(path.replace(os.sep, "/") for path in files)
    return sorted(found)


class BuildPyWithResources(build_py):
    """build_py that also copies lua/ and migrations/ into gateway/_resources/ of the build."""

    def _resource_mapping(self):
        """Build-directory target -> source, e.g. build/lib/gateway/_resources/lua/hold.lua -> lua/hold.lua."""
        return {os.path.join(self.build_lib, RESOURCES_TARGET, *path.split("/")): path for path in _resource_files()}

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's own lua/ and migrations/
            return
        # Start from an empty gateway/_resources/: a file deleted from lua/ must not linger in a reused build/.
        shutil.rmtree(os.path.join(self.build_lib, RESOURCES_TARGET), ignore_errors=True)
        for target, source in self._resource_mapping().items():
            self.mkpath(os.path.dirname(target))
            self.copy_file(source, target, preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + list(self._resource_mapping())

    def get_source_files(self):  # sdist: include the resource directories
        return super().get_source_files() + _resource_files()


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithResources})
