"""In-process hot-path structures: native (Cython) when built, else the pure-Python twin.

``FLASHGATE_PURE_PYTHON=1`` forces the twin; ``IMPLEMENTATION`` says which one is in use.
"""

import importlib
import logging
import os

__all__ = ["AvailabilitySnapshot", "RecentSet", "TokenBucketTable", "OP_HOLD", "OP_RELEASE",
           "OP_SELL", "OP_VOID", "OP_EXPIRE", "IMPLEMENTATION", "c_module", "py_module"]


def c_module():
    """The native module; raises ImportError when it is not built."""
    return importlib.import_module("hotpath._snapshot_c")


def py_module():
    """The pure-Python twin."""
    return importlib.import_module("hotpath._snapshot_py")


_impl = None
if os.environ.get("FLASHGATE_PURE_PYTHON", "") in ("", "0"):
    try:
        _impl = c_module()
    except ImportError as exc:
        logging.getLogger("flashgate.hotpath").warning(
            "native hotpath extension not available (%s); using the pure-Python twin "
            "(build it with `python setup.py build_ext --inplace`)", exc)
if _impl is None:
    _impl = py_module()

IMPLEMENTATION = "py" if _impl.__name__.endswith("_py") else "c"
AvailabilitySnapshot = _impl.AvailabilitySnapshot
RecentSet = _impl.RecentSet
TokenBucketTable = _impl.TokenBucketTable
OP_HOLD, OP_RELEASE, OP_SELL, OP_VOID, OP_EXPIRE = (
    _impl.OP_HOLD, _impl.OP_RELEASE, _impl.OP_SELL, _impl.OP_VOID, _impl.OP_EXPIRE)
