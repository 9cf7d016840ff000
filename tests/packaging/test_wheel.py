"""An installed wheel runs without the source tree.

The repository is copied to a temporary directory, an sdist is built from the copy (the
PEP 517 hook, as `python -m build` does) and a wheel from the unpacked sdist (`pip wheel
--no-deps --no-build-isolation`, offline). The wheel is installed without dependencies
into a fresh virtualenv outside the checkout; a `.pth` file lends it this interpreter's
site-packages for the dependencies (not the editable `gateway`: `.pth` files of a
directory added that way are not processed). Then, from a temporary working directory
and without PYTHONPATH, `flashgate migrate` builds a fresh database and a small script
loads every Lua script shipped in the package into the real Redis and runs
`prepare_event` + `hold`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import redis

from tests.utils.servers import delete_prefix, drop_database, run_async

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Never copied into the build: local state, caches and earlier build products (see .gitignore).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "var", "__pycache__",
                                     "*.pyc", "*.so", ".pytest_cache", ".hypothesis", "node_modules", "_resources",
                                     ".env")

SNIPPET = r"""
import json, os, re, sys
import redis
import gateway, hotpath
from gateway.core.config import Settings
from gateway.core.resources import LUA_DIR, MIGRATIONS_DIR, STATIC_DIR
from gateway.store.keys import event_keys

INCLUDE = re.compile(r"^--!include (\w+)\s*$", re.MULTILINE)  # as gateway/store/scripts.py load_source


def source(path):
    return INCLUDE.sub(lambda m: (LUA_DIR / "lib" / f"{m.group(1)}.lua").read_text(), path.read_text())


def decode(raw):
    return [raw[0].decode(), json.loads(raw[1])]


settings = Settings()
client = redis.Redis.from_url(settings.redis_url)
sources = {p.stem: source(p) for p in sorted(LUA_DIR.glob("*.lua"))}
shas = {name: client.script_load(text) for name, text in sources.items()}
keys = event_keys(settings.redis_prefix, 1)
prepared = decode(client.evalsha(shas["prepare_event"], len(keys), *keys, "on_sale", 10, 60000, 4, 120000))
held = decode(client.evalsha(shas["hold"], len(keys), *keys, "hold-1", "buyer-1", 2, 3, 4))
snapshot = hotpath.AvailabilitySnapshot([(0, 10)])
snapshot.load(client.get(keys[1]), client.get(keys[2]), held[1]["version"])
print(json.dumps({
    "gateway": gateway.__file__, "hotpath": hotpath.__file__, "hotpath_impl": hotpath.IMPLEMENTATION,
    "lua_dir": str(LUA_DIR), "migrations_dir": str(MIGRATIONS_DIR), "static_dir": str(STATIC_DIR),
    "data_dir": str(settings.data_dir), "scripts": sorted(shas),
    "unexpanded": [name for name, text in sources.items() if INCLUDE.search(text)],
    "prepared": prepared, "held": held, "snapshot_held": [i for i in range(10) if snapshot.is_held(i)],
}))
"""


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)
    assert proc.returncode == 0, f"{args}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    return proc


def outside_checkout(path: Path) -> Path:
    assert not path.resolve().is_relative_to(REPO), f"{path} is inside the checkout"
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = outside_checkout(tmp_path_factory.mktemp("wheel-build"))
    src = root / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES, symlinks=True)
    sdist = run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                 "print(b.build_sdist(sys.argv[1]))", root / "sdist"], cwd=src).stdout.strip().splitlines()[-1]
    with tarfile.open(root / "sdist" / sdist) as archive:
        archive.extractall(root / "unpacked", filter="data")
    (tree,) = (root / "unpacked").iterdir()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", root / "dist", tree], cwd=root)
    (built,) = (root / "dist").glob("flashgate-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = outside_checkout(tmp_path_factory.mktemp("installed") / "venv")
    run([sys.executable, "-m", "venv", "--without-pip", path])
    python = path / "bin" / "python"
    # Install first, lend the dependencies after: pip must not see this checkout's editable flashgate.
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_flashgate_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no FLASHGATE_* of the outer run, no virtualenv of the checkout."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    return {**env, **extra}


def test_wheel_ships_resources_and_both_hotpath_implementations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for directory, pattern in (("lua", "*.lua"), ("lua", "lib/*.lua"), ("migrations", "*.sql")):
        for path in (REPO / directory).glob(pattern):
            assert f"gateway/_resources/{path.relative_to(REPO).as_posix()}" in names, path
    assert {"gateway/_resources/lua/lib/common.lua", "gateway/core/resources.py",
            "hotpath/__init__.py", "hotpath/_snapshot_py.py", "hotpath/_layout.py"} <= names
    assert {f"gateway/static/{p.name}" for p in (REPO / "gateway" / "static").iterdir() if p.is_file()} <= names
    assert not any(name.startswith(("lua/", "migrations/", "tests/")) for name in names)
    assert not any(name.endswith(".c") for name in names)  # Cython's generated C stays out (1.7 MB)


def test_installed_copy_migrates_and_holds(venv: Path, wheel: Path, tmp_path: Path, redis_server_url: str,
                                           postgres_server_url: str) -> None:
    cwd = outside_checkout(tmp_path / "cwd")
    cwd.mkdir()
    db_name = f"flashgate_wheel_{secrets.token_hex(4)}"
    database_url = postgres_server_url.rsplit("/", 1)[0] + "/" + db_name
    prefix = f"wheel{secrets.token_hex(4)}"
    env = clean_env(REDIS_URL=redis_server_url, DATABASE_URL=database_url, FLASHGATE_REDIS_PREFIX=prefix,
                    FLASHGATE_ENVIRONMENT="development")
    python = venv / "bin" / "python"
    try:
        migrations = sorted(p.stem for p in (REPO / "migrations").glob("*.sql"))
        out = run([venv / "bin" / "flashgate", "migrate"], cwd=cwd, env=env).stdout
        assert out.split()[:2] == ["applied", str(len(migrations))], out
        assert all(m in out for m in migrations), out
        again = run([venv / "bin" / "flashgate", "migrate"], cwd=cwd, env=env).stdout
        assert again.startswith("applied 0 migration(s)"), again

        result = json.loads(run([python, "-c", SNIPPET], cwd=cwd, env=env).stdout)
        site = venv.resolve()
        for name in ("gateway", "hotpath", "lua_dir", "migrations_dir", "static_dir"):
            assert Path(result[name]).resolve().is_relative_to(site), (name, result[name])
            assert not Path(result[name]).resolve().is_relative_to(REPO), (name, result[name])
        assert Path(result["lua_dir"]).name == "lua" and Path(result["lua_dir"]).parent.name == "_resources"
        assert Path(result["data_dir"]) == cwd.resolve() / "var"  # never inside site-packages
        assert (cwd / "var" / "dev-secret").is_file()  # the development secret went there too
        assert set(result["scripts"]) == {p.stem for p in (REPO / "lua").glob("*.lua")}
        assert result["unexpanded"] == []
        assert result["prepared"] == ["ok", {"created": True, "version": 0}]
        status, hold = result["held"]
        assert status == "ok" and hold["hold_id"] == "hold-1" and hold["seats"] == [3, 4], result["held"]
        assert result["snapshot_held"] == [3, 4]
        native = any(n.startswith("hotpath/_snapshot_c.") and n.endswith((".so", ".pyd"))
                     for n in zipfile.ZipFile(wheel).namelist())
        assert result["hotpath_impl"] == ("c" if native else "py")

        pure = run([python, "-c", "import hotpath; print(hotpath.IMPLEMENTATION, hotpath.__file__)"], cwd=cwd,
                   env={**env, "FLASHGATE_PURE_PYTHON": "1"}).stdout.split()
        assert pure[0] == "py" and Path(pure[1]).resolve().is_relative_to(site), pure
    finally:
        run_async(drop_database, postgres_server_url, db_name)
        delete_prefix(redis_server_url, prefix)
        assert not redis.Redis.from_url(redis_server_url).keys(f"{prefix}:*")
