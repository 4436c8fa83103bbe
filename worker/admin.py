"""Object-level admin operations run by the owning worker (info, delete, export, import,
inject, run_in_object), and `live`: the ids of this worker's objects of a class that
are in memory (the target names only the class)."""

from __future__ import annotations

from typing import Any

from stateroom import _codec
from stateroom._files import sqlite_file_bytes
from stateroom._protocol import Admin


async def run_admin(worker: Any, msg: Admin) -> bytes:
    target = msg.target
    if msg.op == "inject":
        worker.faults.arm(msg.params["point"], target, msg.params.get("times", 1))
        return _codec.encode(True)
    if msg.op == "run_in_object":
        from .probes import run_in_object

        return await run_in_object(worker, target, msg.data, msg.request_id)
    if msg.op == "live":
        return _codec.encode(
            sorted(
                oid
                for (class_name, oid), host in worker.catalog.items()
                if class_name == target.class_name and host.instance is not None
            )
        )
    if msg.op == "info":
        host = worker.catalog.get((target.class_name, target.id))
        path = worker.object_path(target)
        size = host.db.size_bytes() if host is not None else sqlite_file_bytes(path)
        return _codec.encode({"bytes": size, "active": bool(host and host.instance is not None)})
    if msg.op == "delete":
        host = worker.host_for(target)
        host.reset("deleted by an admin")
        host.db.remove_files()
        worker.evict(host)
        return _codec.encode(True)
    if msg.op == "export":
        from .snapshots import export_state

        return _codec.encode(await export_state(worker, target))
    if msg.op == "import":
        from .snapshots import import_state

        await import_state(worker, target, msg.data)
        return _codec.encode(True)
    raise ValueError(f"unknown admin op {msg.op!r}")
