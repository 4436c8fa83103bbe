"""Errors: one root for runtime errors, rebuilt across process boundaries by `kind`.

`DurableObjectError` is raised for failures of the runtime itself (an object reset,
a worker crash, overload). Its subclasses are grouped by what the caller should do,
and every instance carries `retryable` and `overloaded`.

Exceptions raised by user code in an object reach callers as the same built-in type
(with `.remote = True`) or as `RemoteError`. Errors never travel pickled: they cross
processes as `ErrorInfo` (kind, type name, message, flags; see `_protocol`) and are
rebuilt by `error_from_info`.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "BindingNotFoundError",
    "DeployError",
    "DurableObjectError",
    "ObjectResetError",
    "OverloadedError",
    "RemoteError",
    "SqlError",
    "WorkerCrashedError",
    "error_to_fields",
    "error_from_fields",
]


class DurableObjectError(Exception):
    """A failure of the runtime (not of user code). See `retryable` and `overloaded`."""

    kind = "runtime"
    remote = True

    def __init__(self, message: str = "", *, retryable: bool = False, overloaded: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.overloaded = overloaded


class ObjectResetError(DurableObjectError):
    """The object was reset (abort, failed commit, CPU limit) while serving the call."""

    kind = "reset"


class WorkerCrashedError(DurableObjectError):
    """The worker process running the call died. Retryable if nothing was committed."""

    kind = "crashed"


class OverloadedError(DurableObjectError):
    """Too many queued events for one object; back off and retry."""

    kind = "overloaded"

    def __init__(self, message: str = "", *, retryable: bool = True, overloaded: bool = True):
        super().__init__(message, retryable=retryable, overloaded=overloaded)


class BindingNotFoundError(DurableObjectError, LookupError):
    """No binding (or class) of that name in the current deployment."""

    kind = "not_found"


class DeployError(DurableObjectError):
    """A deployment was refused (bad module, bad config, refused migration)."""

    kind = "deploy"


class RemoteError(Exception):
    """A non-built-in exception raised by user code in an object, rebuilt by name."""

    remote = True

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


class SqlError(ValueError):
    """A failed or refused SQL statement; `sqlite_code` is SQLite's result code."""

    def __init__(self, message: str, sqlite_code: int | None = None):
        super().__init__(message)
        self.sqlite_code = sqlite_code


_RUNTIME_KINDS: dict[str, type[DurableObjectError]] = {
    cls.kind: cls
    for cls in (
        DurableObjectError,
        ObjectResetError,
        WorkerCrashedError,
        OverloadedError,
        BindingNotFoundError,
        DeployError,
    )
}


def error_to_fields(exc: BaseException) -> dict[str, Any]:
    """Describe an exception as plain data for the wire (never pickled)."""
    if isinstance(exc, DurableObjectError):
        return {
            "kind": exc.kind,
            "type": type(exc).__name__,
            "message": exc.message,
            "retryable": exc.retryable,
            "overloaded": exc.overloaded,
        }
    if isinstance(exc, RemoteError):
        return {"kind": "remote", "type": exc.type_name, "message": exc.message}
    if isinstance(exc, SqlError):
        return {"kind": "sql", "type": "SqlError", "message": str(exc), "code": exc.sqlite_code}
    message = str(exc.args[0]) if len(exc.args) == 1 else (str(exc) if exc.args else "")
    return {"kind": "remote", "type": type(exc).__name__, "message": message}


def error_from_fields(fields: dict[str, Any]) -> Exception:
    """Rebuild an exception described by `error_to_fields`."""
    kind = fields.get("kind", "runtime")
    message = fields.get("message", "")
    if kind in _RUNTIME_KINDS:
        cls = _RUNTIME_KINDS[kind]
        return cls(
            message,
            retryable=bool(fields.get("retryable", False)),
            overloaded=bool(fields.get("overloaded", False)),
        )
    if kind == "sql":
        err = SqlError(message, fields.get("code"))
        err.remote = True  # type: ignore[attr-defined]
        return err
    type_name = fields.get("type", "Exception")
    builtin = getattr(builtins, type_name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            exc: Exception = builtin(message)
        except Exception:
            exc = RemoteError(type_name, message)
    else:
        exc = RemoteError(type_name, message)
    exc.remote = True  # type: ignore[attr-defined]
    return exc
