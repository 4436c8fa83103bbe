"""Supervisor features that plug into `Supervisor.extensions` (sockets, alarms, meters).

Each extension may define: `serve(task_status)`, `stop()`, `route(request, parts,
query)`, `public_route(request, path)`, `on_worker_message(worker, msg) -> bool`,
`on_deploy(dep, plan)`, `on_object_deleted(ns_key, id)`, `sockets_parked(index)`.
"""

from __future__ import annotations

from typing import Any


def install_extensions(sup: Any) -> None:
    pass
