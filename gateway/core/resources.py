"""Where the files the code reads at run time live: Lua scripts, SQL migrations, static files, templates.

In a source checkout `lua/` and `migrations/` sit at the top level of the repository
(the documented layout). A wheel ships them inside the package, as
`gateway/_resources/lua/**` and `gateway/_resources/migrations/*.sql` (setup.py's
`build_py` copies them there), so an installed copy never looks for a source tree.
The packaged copy wins when it is present; otherwise the source tree is used.
`FLASHGATE_LUA_DIR`, when set, names another Lua directory that wins over both: it is meant for
running a process on a modified copy of the scripts to verify the audit (docs/audit.md).
`static/` and `templates/` are inside the `gateway` package in both cases.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The `gateway` package directory (in the checkout, or in site-packages when installed).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The directory `gateway` is imported from: the repository root in a checkout, site-packages when installed.
IMPORT_ROOT = PACKAGE_DIR.parent
#: True when running from a source checkout (editable install or PYTHONPATH), not from an installed wheel.
IN_SOURCE_CHECKOUT = (IMPORT_ROOT / "pyproject.toml").is_file()
#: Where a wheel keeps the top-level resource directories (see setup.py).
BUNDLED_DIR = PACKAGE_DIR / "_resources"


def _resource_dir(name: str) -> Path:
    bundled = BUNDLED_DIR / name
    if bundled.is_dir():
        return bundled
    return IMPORT_ROOT / name


def _lua_dir() -> Path:
    override = os.environ.get("FLASHGATE_LUA_DIR", "").strip()
    if not override:
        return _resource_dir("lua")
    path = Path(override).expanduser().resolve()
    if not (path / "hold.lua").is_file():
        raise RuntimeError(f"FLASHGATE_LUA_DIR={override}: not a directory of the Lua scripts (no hold.lua there)")
    return path


LUA_DIR: Path = _lua_dir()
MIGRATIONS_DIR: Path = _resource_dir("migrations")
STATIC_DIR: Path = PACKAGE_DIR / "static"
TEMPLATES_DIR: Path = PACKAGE_DIR / "templates"

__all__ = ["LUA_DIR", "MIGRATIONS_DIR", "STATIC_DIR", "TEMPLATES_DIR", "PACKAGE_DIR", "IMPORT_ROOT",
           "IN_SOURCE_CHECKOUT"]
