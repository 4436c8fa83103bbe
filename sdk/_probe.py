"""Shipping a test's function to the runtime by value (`Client.run_in_object`).

cloudpickle pickles functions of importable modules *by reference* (module and
name), which the worker could not resolve for a user's test module. So the
function's own module is registered for pickling by value for the duration of one
`dumps`, unless it is the standard library, an installed package, or stateroom
itself: those are importable in the worker and stay by reference. What the
function uses from other modules travels by the same rule.

Only the worker that owns the object unpickles the result
(`stateroom.worker.probes`); the supervisor passes the bytes along unopened.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

import cloudpickle

__all__ = ["pickle_by_value"]


def _installed_roots() -> list[Path]:
    roots = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.append(Path(sysconfig.get_paths()[key]).resolve())
        except (KeyError, OSError):
            pass
    return roots


def _is_local(module: Any) -> bool:
    """True for a module of the user's own code (not stdlib, not installed)."""
    name = getattr(module, "__name__", "")
    if name == "__main__" or name.split(".")[0] == "stateroom":
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    try:
        resolved = Path(path).resolve()
    except OSError:
        return False
    return not any(resolved.is_relative_to(root) for root in _installed_roots())


def pickle_by_value(fn: Any) -> bytes:
    """cloudpickle `fn`, with its own (user) module pickled by value.

    Raises `TypeError` naming the problem if `fn` is not callable or cannot be
    pickled (e.g. it closes over a lock or an open socket).
    """
    if not callable(fn):
        raise TypeError(f"expected a function fn(instance, ctx), not {type(fn).__name__}")
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    register = (
        module is not None
        and _is_local(module)
        and module.__name__ not in cloudpickle.list_registry_pickle_by_value()
    )
    if register:
        try:
            cloudpickle.register_pickle_by_value(module)
        except (ValueError, ImportError):
            register = False
    try:
        return cloudpickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"cannot pickle {fn!r}: {type(exc).__name__}: {exc}") from None
    finally:
        if register:
            cloudpickle.unregister_pickle_by_value(module)
