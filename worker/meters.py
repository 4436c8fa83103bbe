"""Meters: each object's usage, counted in the worker where the work happens.

Every live object (`ObjectHost`) carries `counters` (see `catalog.Counters`): the
usage since its last report. Who increments what:

* requests: one per fetch or RPC delivered to the object (`count_request`, called
  by `Worker.object_fetch` / `object_rpc`) and one per alarm run (alarms).
* ws_messages_in: one per WebSocket message delivered (sockets).
* rows_read / rows_written: from SQL cursors and KV calls (storage).
* cpu_ms: thread CPU time of the object's tasks, measured by `charged` below.
* active_s: wall time the object spends in memory (constructed and not evicted,
  hibernated or reset), accounted here from `activated` / `deactivated`.
* stored_bytes: not a counter but the size of the object's files on disk, read
  when a report is built.

CPU attribution. Events of one object interleave with other objects' events on
the worker's one trio thread, so timing an event from start to end would charge
it for everyone else's work. Instead the CPU limit's wrapper (`limits.Metered`),
which already drives each event's coroutine itself and reads `time.thread_time()`
around every *task step* (the synchronous stretch between two awaits), adds each
step's time to the object's `cpu_ms` too: one pair of clock reads serves both.
Besides event steps the catalog charges the constructor and each commit (its
SQLite work, on whichever thread ran it). Thread CPU time counts only the
measuring thread's time on the CPU, so waiting for the disk (an fsync) or for
another object is not charged; the SQLite work of a storage call is. Not charged
to any object: worker bookkeeping (framing, `Default`) and tasks user code spawns
itself (`ctx.wait_until`). No trio instrument is used for this (one would pay on
every step of every task: measured at ~2 µs per step here).

Reports. `take()` builds one row per object with any usage since the last report
`[ns_key, id, requests, ws_messages_in, cpu_ms, active_s, rows_read,
rows_written, stored_bytes]` and zeroes the counters; the worker sends the rows in
its periodic `Stats` message (every second) and on demand (`FlushMeters`), and the
supervisor aggregates them per minute (`stateroom.supervisor.meters`). An object
leaving memory is reported once more, with its final size, at the next report.

Invariant: every unit counted is reported exactly once (rows are built and the
counters zeroed in the same synchronous step), unless the worker process dies
first: a crash loses at most the last second of its usage.

`STATEROOM_METERS=0` in the environment switches metering off (no CPU
charging, no reports) to measure its overhead.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["ENABLED", "WorkerMeters", "meters_enabled"]


def meters_enabled(environ: Any = None) -> bool:
    """False when `STATEROOM_METERS` is 0/false/no/off (overhead measurements)."""
    env = os.environ if environ is None else environ
    return env.get("STATEROOM_METERS", "1").strip().lower() not in ("0", "false", "no", "off")


# Read once per process: the catalog consults it at every spawn.
ENABLED = meters_enabled()


class WorkerMeters:
    """The worker's side of metering: active time, and the periodic report."""

    def __init__(self, worker: Any, enabled: bool | None = None) -> None:
        self.worker = worker
        self.enabled = ENABLED if enabled is None else enabled
        # host -> monotonic time its active time was last accounted up to.
        # Invariant: a host is here iff its instance is constructed (or was, and
        # the next report notices it is gone).
        self._active_since: dict[Any, float] = {}
        # Final rows of objects that left memory since the last report: (ns, id) -> row.
        self._retired: dict[tuple[int, str], list[Any]] = {}

    # ------------------------------------------------------------------ events

    def count_request(self, host: Any) -> None:
        """One fetch or RPC delivered to `host`."""
        host.counters.requests += 1

    def activated(self, host: Any) -> None:
        """`host`'s instance was constructed: its active time starts now."""
        if self.enabled and host not in self._active_since:
            self._active_since[host] = time.monotonic()

    def deactivated(self, host: Any) -> None:
        """`host` left memory (evicted, hibernated or reset): close its active time."""
        if not self.enabled:
            return
        since = self._active_since.pop(host, None)
        active = time.monotonic() - since if since is not None else 0.0
        row = self._row(host, active)
        if row is not None:
            key = (row[0], row[1])
            old = self._retired.get(key)
            if old is not None:
                row = _merge(old, row)
            self._retired[key] = row

    # ------------------------------------------------------------------ reports

    def take(self) -> list[list[Any]]:
        """Rows of usage since the last report; zeroes the counters."""
        if not self.enabled:
            return []
        now = time.monotonic()
        rows: list[list[Any]] = []
        catalog = self.worker.catalog
        seen = set()
        for host in list(catalog.values()):
            seen.add(host)
            active = 0.0
            since = self._active_since.get(host)
            if since is not None:
                active = now - since
                if host.instance is None:
                    # Left memory without a hook (reset): closed at this report.
                    del self._active_since[host]
                else:
                    self._active_since[host] = now
            row = self._row(host, active)
            if row is not None:
                rows.append(row)
        for host, since in list(self._active_since.items()):
            if host not in seen:
                # Dropped from the catalog without `deactivated`.
                del self._active_since[host]
                row = self._row(host, now - since)
                if row is not None:
                    rows.append(row)
        if self._retired:
            merged: dict[tuple[int, str], list[Any]] = dict(self._retired)
            self._retired.clear()
            for row in rows:
                key = (row[0], row[1])
                old = merged.get(key)
                merged[key] = row if old is None else _merge(old, row)
            rows = list(merged.values())
        return rows

    def _row(self, host: Any, active_s: float) -> list[Any] | None:
        c = host.counters
        if not (
            c.requests or c.ws_messages_in or c.cpu_ms or c.rows_read or c.rows_written or active_s
        ):
            return None
        try:
            ns_key = int(host.db.path.parent.name)
        except (AttributeError, ValueError):
            return None
        row = [
            ns_key,
            host.target.id,
            c.requests,
            c.ws_messages_in,
            c.cpu_ms,
            active_s,
            c.rows_read,
            c.rows_written,
            host.db.size_bytes(),
        ]
        c.requests = 0
        c.ws_messages_in = 0
        c.cpu_ms = 0.0
        c.rows_read = 0
        c.rows_written = 0
        return row


def _merge(old: list[Any], new: list[Any]) -> list[Any]:
    """Two reports of one object: counters add up, the later size wins."""
    return [old[0], old[1], *(a + b for a, b in zip(old[2:8], new[2:8], strict=True)), new[8]]
