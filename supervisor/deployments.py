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
   error becomes a 400 with the exception text and nothing changes. A dry run
   stops here.
4. `commit_deployment`: write the bundle file (fsynced), then apply the plan and
   record the deployment in one runtime-database transaction.
5. Activate it in every worker (`worker/redeploy.py`: objects finish in-flight
   events on the old code and meet the new code at their next event), switch the
   supervisor's routing to the new bindings, and only then remove the files of
   deleted classes.

Invariants:
  * A refused deploy leaves nothing behind: no runtime-database row, no bundle file.
  * Renames keep the namespace key and secret, so ids and object files stay.
  * A deleted class's namespace is never reused: a later class of the same name gets
    a new key and secret, and starts empty.
  * Deployments are numbered 1, 2, ...; a rollback is a new deployment carrying an
    earlier bundle.
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
    db: RuntimeDB,
    data_dir: Path,
    config: dict[str, Any],
    module_classes: list[str],
) -> dict[str, Any]:
    """Work out what a deploy would do, without changing anything.

    Args:
        config: the normalized config of the new deployment.
        module_classes: the DurableObject classes defined in its module.

    Returns {"apply": [tags], "steps": [[op, ...]] in migration order ("create", c) /
    ("rename", a, b) / ("delete", c), "create": [classes], "rename": [[from, to]],
    "delete": [classes], "live": [classes after the deploy]}.

    Raises:
        DeployRefused: naming the class, when a migration does not fit the classes
        that exist, a binding points at a class no migration created (or one this
        deploy deletes) or one missing from the module, or a class that still has
        data is dropped from the module without a `deleted_classes` or
        `renamed_classes` migration. (A class without data and without a binding
        in the new config may simply disappear from the module; it stays known and
        can come back later.)
    """
    live = dict(db.namespaces())  # class -> (key, secret)
    applied = db.applied_tags()
    plan: dict[str, Any] = {"apply": [], "steps": [], "create": [], "rename": [], "delete": []}
    # class -> the live class it continues (itself, the class renamed into it) or None if new.
    state: dict[str, str | None] = {c: c for c in live}
    deleted_by: dict[str, str] = {}
    for m in config["migrations"]:
        if m["tag"] in applied:
            continue
        tag = m["tag"]
        plan["apply"].append(tag)
        for c in m["new_classes"]:
            if c in state:
                raise DeployRefused(f"migration {tag!r}: class {c!r} already exists")
            state[c] = None
            deleted_by.pop(c, None)
            plan["steps"].append(["create", c])
            plan["create"].append(c)
        for r in m["renamed_classes"]:
            a, b = r["from"], r["to"]
            if a not in state:
                raise DeployRefused(f"migration {tag!r}: cannot rename unknown class {a!r}")
            if b in state:
                raise DeployRefused(
                    f"migration {tag!r}: cannot rename {a!r} to existing class {b!r}"
                )
            state[b] = state.pop(a)
            plan["steps"].append(["rename", a, b])
            plan["rename"].append([a, b])
        for c in m["deleted_classes"]:
            if c not in state:
                raise DeployRefused(f"migration {tag!r}: cannot delete unknown class {c!r}")
            del state[c]
            deleted_by[c] = tag
            plan["steps"].append(["delete", c])
            plan["delete"].append(c)
    for binding, class_name in config["bindings"].items():
        if class_name not in state:
            if class_name in deleted_by:
                raise DeployRefused(
                    f"binding {binding!r}: class {class_name!r} is deleted by migration"
                    f" {deleted_by[class_name]!r}; remove the binding or the deletion"
                )
            raise DeployRefused(
                f"binding {binding!r}: class {class_name!r} was not created by any migration"
                " (add it to new_classes / new_sqlite_classes)"
            )
        if class_name not in module_classes:
            raise DeployRefused(
                f"binding {binding!r}: class {class_name!r} is not defined in the module"
            )
    for c, origin in sorted(state.items()):
        if c in module_classes or origin is None:
            continue
        if class_has_data(data_dir, live[origin][0]):
            raise DeployRefused(
                f"class {c!r} still has data but is missing from the module; add a"
                f" deleted_classes or renamed_classes migration for {c!r}"
            )
    plan["live"] = sorted(state)
    return plan


def apply_plan(db: RuntimeDB, data_dir: Path, plan: dict[str, Any], version: int) -> list[Path]:
    """Apply a plan inside the caller's transaction, step by step in migration order.

    Returns the object folders of deleted classes; the caller removes them once the
    transaction has committed and no worker holds their files open any more.
    """
    now = time.time()
    conn = db.conn
    doomed: list[Path] = []
    for step in plan["steps"]:
        op = step[0]
        if op == "rename":
            conn.execute(
                "UPDATE namespaces SET class_name=? WHERE class_name=? AND deleted IS NULL",
                (step[2], step[1]),
            )
        elif op == "delete":
            for (key,) in conn.execute(
                "SELECT key FROM namespaces WHERE class_name=? AND deleted IS NULL", (step[1],)
            ):
                doomed.append(data_dir / "objects" / str(key))
                conn.execute("DELETE FROM names WHERE ns_key=?", (key,))
                conn.execute("DELETE FROM alarms WHERE ns_key=?", (key,))
            conn.execute(
                "UPDATE namespaces SET class_name=NULL, deleted=? WHERE class_name=?"
                " AND deleted IS NULL",
                (now, step[1]),
            )
        elif op == "create":
            conn.execute(
                "INSERT INTO namespaces(class_name, secret, created) VALUES(?,?,?)",
                (step[1], new_namespace_secret(), now),
            )
    for tag in plan["apply"]:
        conn.execute(
            "INSERT INTO migrations(tag, deployment, applied) VALUES(?,?,?)", (tag, version, now)
        )
    return doomed


def tentative_namespaces(db: RuntimeDB, plan: dict[str, Any]) -> dict[str, list[Any]]:
    """Namespaces as they would be after the plan (new classes get throwaway secrets)."""
    live = {c: [k, s.hex()] for c, (k, s) in db.namespaces().items()}
    fresh = 0
    for step in plan["steps"]:
        if step[0] == "rename":
            live[step[2]] = live.pop(step[1])
        elif step[0] == "delete":
            live.pop(step[1], None)
        elif step[0] == "create":
            fresh += 1
            live[step[1]] = [-fresh, new_namespace_secret().hex()]
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


def commit_deployment(
    db: RuntimeDB,
    data_dir: Path,
    version: int,
    bundle: bytes,
    plan: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
    note: str,
) -> list[Path]:
    """Write the bundle, then apply the plan and record the deployment atomically.

    Returns the folders of deleted classes (to remove after activation). On any
    failure the bundle file is removed again and the database is unchanged.
    """
    sha = write_bundle(data_dir, version, bundle)
    try:
        with db.transaction():
            doomed = apply_plan(db, data_dir, plan, version)
            manifest = manifest_for(db, config, meta)
            db.insert_deployment(version, config, manifest, PYTHON_TAG, sha, note)
    except BaseException:
        bundle_path(data_dir, version).unlink(missing_ok=True)
        raise
    return doomed


def bundle_path(data_dir: Path, version: int) -> Path:
    return data_dir / "deployments" / f"{version:06d}.bundle"


def write_bundle(data_dir: Path, version: int, bundle: bytes) -> str:
    path = bundle_path(data_dir, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(bundle)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(bundle).hexdigest()


def read_bundle(data_dir: Path, version: int) -> bytes:
    return bundle_path(data_dir, version).read_bytes()


def sweep_leftovers(db: RuntimeDB, data_dir: Path) -> None:
    """At startup: remove what a supervisor crash in the middle of a deploy left behind.

    That is the object folders of deleted classes (removed only after activation)
    and bundle files of deployments that were never recorded.
    """
    for (key,) in db.conn.execute("SELECT key FROM namespaces WHERE deleted IS NOT NULL"):
        shutil.rmtree(data_dir / "objects" / str(key), ignore_errors=True)
    recorded = {d["version"] for d in db.deployments()}
    folder = data_dir / "deployments"
    if folder.is_dir():
        for path in folder.iterdir():
            stem = path.name.split(".", 1)[0]
            if stem.isdigit() and int(stem) not in recorded:
                path.unlink(missing_ok=True)


def remove_folders(folders: list[Path]) -> None:
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
