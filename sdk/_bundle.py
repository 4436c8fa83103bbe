"""Building a deployment bundle on the client: classes travel by value (cloudpickle).

The app's main module (and every local helper module imported from the app's
folder) is registered for pickling *by value*, so the server needs none of the
app's files. Third-party packages the app imports are pickled *by reference*: they
must be installed where the runtime runs.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import types
from pathlib import Path
from typing import Any

import cloudpickle

from ._config import ConfigError, load_config, normalize_config
from ._object import DurableObject, WorkerEntrypoint

PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


def _import_main(folder: Path, main: str) -> types.ModuleType:
    path = (folder / main).resolve()
    if not path.is_file():
        raise ConfigError(f"main module not found: {path}")
    name = path.stem
    added = False
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
        added = True
    try:
        # Re-import the app's own modules so edits are picked up (dev mode, repeated
        # deploys), even after an import that failed half-way.
        for mod in [m for m, v in list(sys.modules.items()) if _module_in(v, folder)]:
            del sys.modules[mod]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            # Compiled from the source, never from a cached .pyc: an edit within the
            # same second that keeps the file size would otherwise go unseen.
            code = compile(path.read_bytes(), str(path), "exec")
            exec(code, module.__dict__)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"cannot import {path.name}: {type(exc).__name__}: {exc}") from exc
        return module
    finally:
        if added:
            sys.path.remove(str(folder))


def _module_in(module: Any, folder: Path) -> bool:
    f = getattr(module, "__file__", None)
    if not f:
        return False
    try:
        return Path(f).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def build_payload(
    config: dict[str, Any], module: types.ModuleType, folder: Path | None = None
) -> dict[str, Any]:
    """The deploy request: config, class names, and the pickled classes."""
    classes = {
        n: obj
        for n, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, DurableObject) and obj is not DurableObject
    }
    default = getattr(module, "Default", None)
    if default is not None and not (
        inspect.isclass(default) and issubclass(default, WorkerEntrypoint)
    ):
        raise ConfigError("'Default' must be a subclass of stateroom.WorkerEntrypoint")
    registered = []
    candidates = [module]
    if folder is not None:
        candidates += [
            m for m in list(sys.modules.values()) if m is not module and _module_in(m, folder)
        ]
    for m in candidates:
        if getattr(m, "__name__", "").startswith("stateroom"):
            continue
        try:
            cloudpickle.register_pickle_by_value(m)
            registered.append(m)
        except (ValueError, ImportError):
            pass
    try:
        bundle = cloudpickle.dumps({"classes": classes, "default": default})
    except Exception as exc:
        raise ConfigError(f"cannot pickle the app's classes: {type(exc).__name__}: {exc}") from exc
    finally:
        for m in registered:
            try:
                cloudpickle.unregister_pickle_by_value(m)
            except (ValueError, KeyError):
                pass
    return {
        "config": config,
        "classes": sorted(classes),
        "has_default": default is not None,
        "python": PYTHON_TAG,
        "bundle": bundle,
    }


def payload_from_config_path(path: str | Path) -> dict[str, Any]:
    config, folder = load_config(path)
    module = _import_main(folder, config["main"])
    return build_payload(config, module, folder)


def payload_from_keywords(
    module: types.ModuleType,
    bindings: dict[str, str] | None = None,
    migrations: list[dict[str, Any]] | None = None,
    vars: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name or getattr(module, "__name__", "app"),
        "main": getattr(module, "__file__", None) or "app.py",
        "bindings": dict(bindings or {}),
        "migrations": list(migrations or []),
        "vars": dict(vars or {}),
    }
    config = normalize_config(raw)
    return build_payload(config, module, None)
