"""The selector module: which implementation is loaded, and the pure-Python switch."""

import os
import subprocess
import sys

import pytest

import hotpath

PUBLIC = ["AvailabilitySnapshot", "RecentSet", "TokenBucketTable",
          "OP_HOLD", "OP_RELEASE", "OP_SELL", "OP_VOID", "OP_EXPIRE"]


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "FLASHGATE_PURE_PYTHON"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, cwd=os.path.dirname(os.path.dirname(hotpath.__file__)),
                          check=True, timeout=60)


def test_native_extension_loaded():
    """Guard: the extension must not silently fall back to the twin."""
    if os.environ.get("FLASHGATE_PURE_PYTHON", "") not in ("", "0"):
        assert hotpath.IMPLEMENTATION == "py"
        return
    if hotpath.IMPLEMENTATION != "c":
        message = ("hotpath is running the pure-Python twin: the native extension did not "
                   "load; build it with `python setup.py build_ext --inplace`")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert hotpath.AvailabilitySnapshot is hotpath.c_module().AvailabilitySnapshot


def test_public_names_match_the_selected_module():
    module = hotpath.c_module() if hotpath.IMPLEMENTATION == "c" else hotpath.py_module()
    for name in PUBLIC:
        assert getattr(hotpath, name) is getattr(module, name)


def test_both_modules_have_the_same_api(impl, pure):
    for name in PUBLIC:
        assert hasattr(impl, name)
    for cls in ("AvailabilitySnapshot", "RecentSet", "TokenBucketTable"):
        ours = {n for n in dir(getattr(pure, cls)) if not n.startswith("_")}
        theirs = {n for n in dir(getattr(impl, cls)) if not n.startswith("_")}
        assert ours == theirs
    assert (impl.OP_HOLD, impl.OP_RELEASE, impl.OP_SELL, impl.OP_VOID, impl.OP_EXPIRE) == (
        1, 2, 3, 4, 5)


def test_pure_python_switch_forces_the_twin():
    out = _run("import hotpath; print(hotpath.IMPLEMENTATION, "
               "hotpath.AvailabilitySnapshot.__module__)", FLASHGATE_PURE_PYTHON="1")
    assert out.stdout.split() == ["py", "hotpath._snapshot_py"]
    assert out.stderr == ""


def test_missing_extension_logs_one_warning_and_falls_back():
    code = ("import sys, logging; logging.basicConfig(); "
            "sys.modules['hotpath._snapshot_c'] = None; "
            "import hotpath; print(hotpath.IMPLEMENTATION)")
    out = _run(code)
    assert out.stdout.split() == ["py"]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "flashgate.hotpath" in warnings[0]
    assert "pure-Python twin" in warnings[0]
