"""Alarms on the worker side: one alarm per object, kept in the object's database.

The alarm time lives in `_stateroom_meta` (key 'alarm', epoch ms) and is written in
the object's open transaction like any write, so it commits with the same
durability. Once committed, the supervisor's alarm index learns it (`AlarmSet`,
sent through the output gate), so alarms fire for evicted and hibernated objects
and after restarts.
"""

from __future__ import annotations

import time
from typing import Any

from .catalog import ObjectHost
from .storage import META_TABLE


def _now_ms() -> int:
    return int(time.time() * 1000)


class AlarmStore:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def _ensure_meta(self, host: ObjectHost) -> Any:
        conn = host.db.write_conn()
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {META_TABLE}(key TEXT PRIMARY KEY, value) WITHOUT ROWID"
        )
        return conn

    def get(self, host: ObjectHost) -> int | None:
        if getattr(host, "alarm_running", False) and not getattr(host, "alarm_set_in_handler", False):
            return None
        conn = host.db.open(create=False)
        if conn is None:
            return None
        try:
            for (v,) in conn.execute(f"SELECT value FROM {META_TABLE} WHERE key='alarm'"):
                return int(v)
        except Exception:  # table absent: no alarm
            return None
        return None

    async def set(self, host: ObjectHost, when: Any) -> None:
        from .context import to_epoch_ms

        ms = to_epoch_ms(when)
        if ms <= 0:
            raise ValueError("set_alarm time must be > 0 (epoch milliseconds or a datetime)")
        ms = max(ms, _now_ms())
        host.note_write()
        conn = self._ensure_meta(host)
        conn.execute(
            f"INSERT OR REPLACE INTO {META_TABLE}(key, value) VALUES('alarm', ?)", (ms,)
        )
        if getattr(host, "alarm_running", False):
            host.alarm_set_in_handler = True  # type: ignore[attr-defined]
        self._announce(host, ms)

    def delete(self, host: ObjectHost) -> None:
        if host.db.open(create=False) is None:
            return
        host.note_write()
        conn = self._ensure_meta(host)
        conn.execute(f"DELETE FROM {META_TABLE} WHERE key='alarm'")
        self._announce(host, None)

    def _announce(self, host: ObjectHost, ms: int | None) -> None:
        """Tell the supervisor's index once the write is durable (output-gated)."""
        announce = getattr(self.worker.sockets, "announce_alarm", None)
        if announce is not None:
            host.send_output(lambda: announce(host, ms))
