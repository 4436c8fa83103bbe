"""Supervisor features that plug into `Supervisor.extensions` (sockets, alarms, meters).

Each extension may define: `serve(task_status)`, `stop()`, `route(request, parts,
query)`, `public_route(request, path)`, `on_worker_message(worker, msg) -> bool`,
`on_deploy(dep, plan)`, `on_object_deleted(ns_key, id)`, `sockets_parked(index)`,
`on_worker_ready(worker)` (awaited before a (re)started worker serves; send with
`pool.request(..., starting=True)`),
`object_route(request, target, ns_key, rest, query)` (routes under
`/_stateroom/v1/objects/{binding}/{id}/...`; `rest` is what follows the id).
"""

from __future__ import annotations

from typing import Any


def install_extensions(sup: Any) -> None:
    from .alarms import AlarmScheduler
    from .dashboard import Dashboard
    from .meters import Meters, load_prices

    try:
        prices = load_prices(sup.settings.prices)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    sup.meters = Meters(sup, prices)
    sup.extensions.append(sup.meters)
    sup.extensions.append(Dashboard(sup))
    sup.alarms = AlarmScheduler(sup)
    sup.extensions.append(sup.alarms)
    from .parking import Parking

    sup.parking = Parking(sup)  # also installs itself as the front door's on_upgrade
    sup.extensions.append(sup.parking)
    from .faults import FaultInjection
    from .limits import WorkerLimits

    sup.faults = FaultInjection(sup)
    sup.extensions.append(sup.faults)
    sup.limits = WorkerLimits(sup)
    sup.extensions.append(sup.limits)
