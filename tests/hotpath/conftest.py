"""Fixtures giving the hotpath implementations: ``impl`` runs a test on both ([c] / [py])."""

import os

import pytest

import hotpath


def _load_native():
    try:
        return hotpath.c_module()
    except ImportError as exc:
        return exc


_NATIVE = _load_native()


def require_native():
    """The native module; skips loudly when it is not built, and fails under CI."""
    if isinstance(_NATIVE, ImportError):
        message = (
            f"hotpath NATIVE EXTENSION NOT BUILT ({_NATIVE}); the [c] tests do not run. "
            "Build it with `python setup.py build_ext --inplace`."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return _NATIVE


@pytest.fixture(scope="session", params=["c", "py"])
def impl(request):
    if request.param == "c":
        return require_native()
    return hotpath.py_module()


@pytest.fixture(scope="session")
def native():
    return require_native()


@pytest.fixture(scope="session")
def pure():
    return hotpath.py_module()
