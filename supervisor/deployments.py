"""Deployments: validate, plan migrations, store bundles, activate in workers.

A deployment arrives as plain data from the SDK: the config (bindings, migrations,
vars), the class names in the module, whether it has `Default`, the Python version
that pickled it, and the bundle (cloudpickle bytes, opaque here: the supervisor
never unpickles it). Steps:

1. Check the Python version stamp (pickles are not portable across minor versions).
2. Plan migrations against the runtime database (`plan_migrations`): each tag once,
   in order; refuse with a message naming the class when a binding points at a
   class no migration created, or a class that still has data or a binding is
   dropped without `deleted_classes`/`renamed_classes`.
3. Ask one worker to unpickle the bundle (`validate_only`): an import or unpickle
   error becomes a 400 with the exception text and nothing changes.
4. Write the bundle file (fsynced), then apply the plan and record the deployment in
   one runtime-database transaction; then activate it in every worker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from stateroom._config import ConfigError, normalize_config
from stateroom._ids import new_namespace_secret

from .runtime_db import RuntimeDB

PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


class DeployRefused(Exception):
    """A deployment that must not be applied; the message names the reason."""


def class_has_data(data_dir: Path, ns_key: int) -> bool:
    folder = data_dir / "objects" / str(ns_key)
    return folder.is_dir() and any(folder.iterdir())


def plan_migrations(
    db: RuntimeDB, data_dir: Path, config: dict[str, Any], module_classes: list[str]
) -> dict[str, Any]:
    """Work out what a deploy would do, without changing anything.

    Returns {"apply": [tags], "create": [classes], "rename": [(from, to)],
    "delete": [classes], "live": [classes after the deploy]}.
    """
    live = dict(db.namespaces())  # class -> (key, secret)
    applied = db.applied_tags()
    plan: dict[str, Any] = {"apply": [], "create": [], "rename": [], "delete": []}
    state = {c: "existing" for c in live}
    for m in config["migrations"]:
        if m["tag"] in applied:
            continue
        plan["apply"].append(m["tag"])
        for c in m["new_classes"]:
            if c in state:
                raise DeployRefused(f"migration {m['tag']!r}: class {c!r} already exists")
            state[c] = "new"
            plan["create"].append(c)
        for r in m["renamed_classes"]:
            a, b = r["from"], r["to"]
            if a not in state:
                raise DeployRefused(f"migration {m['tag']!r}: cannot rename unknown class {a!r}")
            if b in state:
                raise DeployRefused(f"migration {m['tag']!r}: cannot rename {a!r} to existing class {b!r}")
            state[b] = state.pop(a)
            plan["rename"].append((a, b))
        for c in m["deleted_classes"]:
            if c not in state:
                raise DeployRefused(f"migration {m['tag']!r}: cannot delete unknown class {c!r}")
            del state[c]
            plan["delete"].append(c)
    for binding, class_name in config["bindings"].items():
        if class_name not in state:
            raise DeployRefused(
                f"binding {binding!r}: class {class_name!r} was not created by any migration"
                " (add it to new_classes / new_sqlite_classes)"
            )
        if class_name not in module_classes:
            raise DeployRefused(
                f"binding {binding!r}: class {class_name!r} is not defined in the module"
            )
    bound = set(config["bindings"].values())
    renamed_to = {b: a for a, b in plan["rename"]}
    for c in state:
        if c in module_classes or c in bound:
            continue
        original = renamed_to.get(c, c)
        if original in live and class_has_data(data_dir, live[original][0]):
            raise DeployRefused(
                f"class {c!r} still has data but is missing from the module; add a"
                f" deleted_classes or renamed_classes migration for {c!r}"
            )
    plan["live"] = sorted(state)
    return plan


def apply_plan(db: RuntimeDB, data_dir: Path, plan: dict[str, Any], version: int) -> list[Path]:
    """Apply a plan inside the caller's transaction; returns folders to remove after commit."""
    now = time.time()
    conn = db.conn
    doomed: list[Path] = []
    for a, b in plan["rename"]:
        conn.execute("UPDATE namespaces SET class_name=? WHERE class_name=? AND deleted IS NULL", (b, a))
    for c in plan["delete"]:
        for (key,) in conn.execute(
            "SELECT key FROM namespaces WHERE class_name=? AND deleted IS NULL", (c,)
        ):
            doomed.append(data_dir / "objects" / str(key))
            conn.execute("DELETE FROM names WHERE ns_key=?", (key,))
            conn.execute("DELETE FROM alarms WHERE ns_key=?", (key,))
        conn.execute(
            "UPDATE namespaces SET class_name=NULL, deleted=? WHERE class_name=? AND deleted IS NULL",
            (now, c),
        )
    for c in plan["create"]:
        conn.execute(
            "INSERT INTO namespaces(class_name, secret, created) VALUES(?,?,?)",
            (c, new_namespace_secret(), now),
        )
    for tag in plan["apply"]:
        conn.execute(
            "INSERT INTO migrations(tag, deployment, applied) VALUES(?,?,?)", (tag, version, now)
        )
    return doomed


def tentative_namespaces(db: RuntimeDB, plan: dict[str, Any]) -> dict[str, list[Any]]:
    """Namespaces as they would be after the plan (new classes get throwaway secrets)."""
    live = {c: [k, s.hex()] for c, (k, s) in db.namespaces().items()}
    for a, b in plan["rename"]:
        live[b] = live.pop(a)
    for c in plan["delete"]:
        live.pop(c, None)
    for i, c in enumerate(plan["create"]):
        live[c] = [-(i + 1), new_namespace_secret().hex()]
    return live


def manifest_for(db: RuntimeDB, config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "bindings": config["bindings"],
        "vars": config["vars"],
        "namespaces": {c: [k, s.hex()] for c, (k, s) in db.namespaces().items()},
        "classes": meta["classes"],
        "has_default": meta["has_default"],
    }


def validate_request(payload: Any) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Check the shape of a deploy request; returns (config, meta, bundle)."""
    if not isinstance(payload, dict):
        raise DeployRefused("deploy request must be a map")
    bundle = payload.get("bundle")
    if not isinstance(bundle, bytes) or not bundle:
        raise DeployRefused("deploy request has no code bundle")
    python = payload.get("python")
    if python != PYTHON_TAG:
        raise DeployRefused(
            f"bundle was pickled by Python {python}, the runtime runs Python {PYTHON_TAG};"
            " deploy from the same Python minor version"
        )
    try:
        config = normalize_config(payload.get("config") or {})
    except ConfigError as exc:
        raise DeployRefused(str(exc)) from None
    classes = payload.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DeployRefused("deploy request lists no classes")
    meta = {"classes": classes, "has_default": bool(payload.get("has_default"))}
    return config, meta, bundle


def write_bundle(data_dir: Path, version: int, bundle: bytes) -> str:
    folder = data_dir / "deployments"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{version:06d}.bundle"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(bundle)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(bundle).hexdigest()


def read_bundle(data_dir: Path, version: int) -> bytes:
    return (data_dir / "deployments" / f"{version:06d}.bundle").read_bytes()


def remove_folders(folders: list[Path]) -> None:
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
