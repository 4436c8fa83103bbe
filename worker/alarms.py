"""Alarms on the worker side: one alarm per object, kept in the object's own database.

The truth about an object's alarm is the row `('alarm', <epoch ms>)` of its
`_stateroom_meta` table. `set_alarm` / `delete_alarm` write that row in the
object's open transaction like any other write, so the alarm commits (or rolls
back, or is lost in a crash) together with the writes around it. The meta table
exists only while it holds a row, so an object with no data and no alarm leaves no
file behind once evicted.

The supervisor keeps an index of alarms (`stateroom.supervisor.alarms`) to know
when to wake which object. The index is a *hint*: after every commit that touched
the alarm the worker reports the committed value (`AlarmSet`, sent through the
output gate, so never before the write is durable and never for a write that was
rolled back), and when the supervisor fires (`RunAlarm`) the worker re-reads the
row and runs the handler only if an alarm is stored and due. A stale or lost index
entry therefore never runs a handler early or twice for one success; it only costs
a wake-up. An object that starts (is constructed) with an alarm stored reports it
again (`resync`), so a commit whose report died with its worker is not forgotten.

Holding: the supervisor sends `RunAlarm` up to `LEAD_MS` before the alarm's time
(`not_before`); the worker holds it in the `RunAlarm`'s own task, outside any event
of the object, until that time, so the hops between processes happen while the
alarm is not due yet. It opens an evicted object's database first (reading the
stored alarm does), so the run does not wait for that either. A `set_alarm` or
`delete_alarm` of the object during the hold ends the hold at once; the usual
checks below then decide (a new alarm not yet due is handed back to the
supervisor, which schedules it). Never early: the hold ends at `not_before` at the
earliest (retries included), and a first attempt still runs only if the stored
alarm is due.

Running an alarm (`run`): it is an ordinary event of the object (arrival order,
input gate, one at a time with other events' storage calls). Inside it:

* the handler gets `AlarmInfo(retry_count, is_retry, scheduled_time)`; a retry
  keeps the original `scheduled_time`;
* while it runs, `get_alarm()` answers None as long as the row holds the alarm
  being run; setting (or deleting) it during the run, if that write is not rolled
  back, replaces the alarm being run;
* on success the stored alarm is cleared unless it was replaced during the run;
  on failure it stays stored (the supervisor schedules the retry) unless it was the
  last retry (`MAX_RETRIES`);
* each run counts as one request of the object (billing).

Invariant: the stored alarm is cleared only by `delete_alarm`, `delete_all`, a
successful run, or the last failed retry; so an acknowledged alarm fires at least
once.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import math
import time
from typing import Any

import trio

from stateroom import _codec
from stateroom._errors import DurableObjectError, ObjectResetError, error_to_fields
from stateroom._object import AlarmInfo
from stateroom._protocol import AlarmSet, Reply, RunAlarm

from .catalog import ObjectHost
from .storage import META_TABLE
from .storage_api import _wrote as wrote

# A failing handler is retried at most this many times (SPEC §5).
MAX_RETRIES = 6

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
# 9999-12-31T23:59:59.999Z: the latest alarm time accepted.
MAX_TIME_MS = 253_402_300_799_999


def now_ms() -> float:
    """Wall-clock time in epoch milliseconds (fractional)."""
    return time.time() * 1000.0


def alarm_time_ms(when: Any) -> int:
    """Epoch milliseconds of a `set_alarm` argument, rounded up (never early).

    Raises:
        TypeError: `when` is neither a datetime nor a number.
        ValueError: `when` is not finite or not after the epoch (`<= 0`).
    """
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.astimezone()
        delta = when - _EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        ms = -((-micros) // 1000)
    elif isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(
            f"set_alarm takes a datetime or epoch milliseconds, not {type(when).__name__}"
        )
    elif isinstance(when, float) and not math.isfinite(when):
        raise ValueError(f"set_alarm time must be finite, not {when!r}")
    else:
        ms = math.ceil(when)
    if ms <= 0:
        raise ValueError(
            f"set_alarm time must be > 0 (epoch milliseconds or a datetime), got {when!r}"
        )
    if ms > MAX_TIME_MS:
        raise ValueError(f"set_alarm time must be before the year 10000, got {when!r}")
    return ms


@functools.lru_cache(maxsize=1024)
def _takes_argument(fn: Any) -> bool:
    """True unless `alarm` is declared without parameters (`async def alarm(self)`).

    `fn` is the function on the class (cached per class), not the bound method.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


class _Run:
    """The alarm handler running in one object."""

    __slots__ = ("original",)

    def __init__(self, original: int) -> None:
        # The stored alarm being run. While the row still holds it, the alarm counts as
        # not set (get_alarm() is None); any other value (or none) replaced it.
        self.original = original


class AlarmStore:
    """`ctx.storage` alarm calls and the `RunAlarm` handler of one worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Objects whose alarm handler is running now -> its run.
        # Invariant: at most one run per host (the supervisor fires one at a time).
        self._running: dict[ObjectHost, _Run] = {}
        # Objects whose RunAlarm is held until its time -> set to end the hold early
        # (their alarm was set or deleted meanwhile). Keyed by (class name, id): an
        # object evicted and woken again during the hold has a new host.
        self._holds: dict[tuple[str, str], trio.Event] = {}

    # ------------------------------------------------------------- the stored row

    def stored(self, host: ObjectHost) -> int | None:
        """The alarm in the object's database (including uncommitted writes), or None."""
        conn = host.db.open(create=False)
        if conn is None or not conn.table_exists("main", META_TABLE):
            return None
        for (value,) in conn.execute(f"SELECT value FROM {META_TABLE} WHERE key='alarm'"):
            return int(value)
        return None

    def _write(self, host: ObjectHost, ms: int | None) -> None:
        """Store (or, with None, remove) the alarm row in the open transaction."""
        if ms is None and self.stored(host) is None:
            return
        hold = self._holds.get((host.target.class_name, host.target.id))
        if hold is not None:
            hold.set()
        conn = host.db.write_conn()
        wrote(host)
        host.counters.rows_written += 1
        if ms is None:
            conn.execute(f"DELETE FROM {META_TABLE} WHERE key='alarm'")
            for _ in conn.execute(f"SELECT 1 FROM {META_TABLE} LIMIT 1"):
                return
            conn.execute(f"DROP TABLE {META_TABLE}")
            return
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {META_TABLE}(key TEXT PRIMARY KEY, value) WITHOUT ROWID"
        )
        conn.execute(f"INSERT OR REPLACE INTO {META_TABLE}(key, value) VALUES('alarm', ?)", (ms,))

    def _announce(self, host: ObjectHost) -> None:
        """Report the committed alarm to the supervisor once the open write is durable."""
        dep = self.worker.deployment
        if dep is None or host.target.class_name not in dep.namespaces:
            return
        ns_key = dep.namespaces[host.target.class_name][0]

        def send() -> None:
            # Runs right after the commit: the row read now is the committed value.
            msg = AlarmSet(ns_key, host.target, self.stored(host))
            try:
                self.worker.conn.send(msg)
            except trio.ClosedResourceError:
                pass  # supervisor gone: this worker exits, the index was already durable

        host.send_output(send)

    # ------------------------------------------------------------- ctx.storage API

    def get(self, host: ObjectHost) -> int | None:
        """`get_alarm()`: None inside the running handler unless the alarm was set again."""
        stored = self.stored(host)
        run = self._running.get(host)
        if run is not None and stored == run.original:
            return None
        return stored

    async def set(self, host: ObjectHost, when: Any) -> None:
        """`set_alarm(when)`: replace the object's alarm; a past time means now.

        Raises TypeError/ValueError (nothing written) for a bad `when`. Completes
        without yielding (a storage call: the input gate stays closed).
        """
        ms = max(alarm_time_ms(when), math.ceil(now_ms()))
        self._write(host, ms)
        self._announce(host)

    def delete(self, host: ObjectHost) -> None:
        """`delete_alarm()` (also part of `delete_all`)."""
        self._write(host, None)
        # Announced even when nothing was stored: it also clears a stale index entry.
        self._announce(host)

    def on_construct(self, host: ObjectHost) -> None:
        """The object starts: if it has an alarm, make sure the index knows it.

        Covers a commit whose `AlarmSet` died with its worker (the commit happened,
        the report had not left the process yet): the next start of the object
        brings the alarm back into the index.
        """
        stored = self.stored(host)
        dep = self.worker.deployment
        if stored is None or dep is None or host.target.class_name not in dep.namespaces:
            return
        ns_key = dep.namespaces[host.target.class_name][0]
        try:
            self.worker.conn.send(AlarmSet(ns_key, host.target, stored, resync=True))
        except trio.ClosedResourceError:
            pass

    def on_state_replaced(self, host: ObjectHost) -> None:
        """The whole database was replaced (import, point-in-time restore): report
        whatever alarm it holds now, so the index follows it."""
        self._announce(host)

    # ------------------------------------------------------------- firing

    async def serve_run(self, msg: RunAlarm) -> None:
        """Answer one `RunAlarm` with a `Reply` whose value is the outcome dict."""
        try:
            outcome = await self.run(msg)
            reply = Reply(msg.request_id, True, value=_codec.encode(outcome))
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which retries
            reply = Reply(msg.request_id, False, error=error_to_fields(exc))
        try:
            self.worker.conn.send(reply)
        except trio.ClosedResourceError:
            pass

    async def run(self, msg: RunAlarm) -> dict[str, Any]:
        """Run the object's alarm handler if an alarm is stored and due (or `force`).

        Returns {"ran": bool, "alarm": stored alarm afterwards (ms or None)} plus,
        when it ran, "ok", "error" (fields or None), "changed", "retry_count",
        "scheduled". Raises if the object was reset or could not be woken.
        """
        worker = self.worker
        target = msg.target
        created = (target.class_name, target.id) not in worker.catalog
        if msg.not_before > now_ms() and not msg.force and not msg.expire:
            await self._hold(msg)
        host = worker.host_for(target)
        if host.instance is None and host.is_idle() and not host.db.in_txn and not msg.expire:
            # Asleep and nothing pending: answer from the file without waking it.
            stored = self.stored(host)
            retrying = msg.retry_count and stored == msg.scheduled
            if stored is None or (stored > now_ms() and not msg.force and not retrying):
                if created:
                    worker.evict(host)
                return {"ran": False, "alarm": stored}

        async def fn(instance: Any) -> dict[str, Any]:
            return await self._run_in_event(host, instance, msg)

        return await worker.deliver(target, fn, None)

    async def _hold(self, msg: RunAlarm) -> None:
        """Wait until `msg.not_before`, or until the object's alarm is set or deleted.

        Opens the object's database first (reading its alarm), so a run of an evicted
        object does not wait for that at its time. Cancellation leaves nothing behind.
        """
        host = self.worker.host_for(msg.target)
        key = (host.target.class_name, host.target.id)
        stored = self.stored(host)
        try:
            while stored is not None and stored == msg.scheduled:
                delay = msg.not_before - now_ms()
                if delay <= 0:
                    return
                wake = self._holds[key] = trio.Event()
                with trio.move_on_after(delay / 1000.0):
                    await wake.wait()
                if wake.is_set():
                    # Set or deleted meanwhile (perhaps in a transaction not committed
                    # yet): a changed alarm ends the hold, the same one holds on.
                    host = self.worker.host_for(msg.target)
                    stored = self.stored(host)
        finally:
            self._holds.pop(key, None)

    async def _run_in_event(self, host: ObjectHost, instance: Any, msg: RunAlarm) -> dict[str, Any]:
        stored = self.stored(host)
        if msg.expire:
            if stored is not None and stored == msg.scheduled:
                self._write(host, None)
            return {"ran": False, "alarm": self.stored(host)}
        # A different stored time is a new alarm: its first attempt.
        retry = msg.retry_count if stored == msg.scheduled else 0
        # Due: its time has come, or it already ran (forced) and failed: this is a retry.
        if stored is None or (stored > now_ms() and not msg.force and not retry):
            return {"ran": False, "alarm": stored}
        if instance is None:
            # Not constructed (evicted or reset before the event started): nothing ran.
            raise DurableObjectError(
                "the object was not live; its alarm runs again", retryable=True
            )
        handler = getattr(instance, "alarm", None)
        if handler is None:
            self.worker.log(
                f"{host.target.class_name} {host.target.id[:12]} has an alarm but no alarm()"
                " handler; dropping the alarm"
            )
            self._write(host, None)
            return {"ran": False, "alarm": None}
        generation = host.generation
        run = _Run(stored)
        self._running[host] = run
        host.counters.requests += 1
        error = None
        try:
            self.worker.fault_point("during_alarm", host)
            info = AlarmInfo(retry_count=retry, is_retry=retry > 0, scheduled_time=stored)
            unbound = getattr(type(instance), "alarm", None)
            takes = _takes_argument(unbound) if inspect.isfunction(unbound) else True
            await (handler(info) if takes else handler())
        except Exception as exc:  # noqa: BLE001 - a failed alarm is retried, not fatal
            error = error_to_fields(exc)
        finally:
            if self._running.get(host) is run:
                del self._running[host]
        if host.generation != generation:
            raise ObjectResetError("the object was reset while its alarm handler ran")
        if error is not None:
            self.worker.log(
                f"alarm of {host.target.class_name} {host.target.id[:12]} failed"
                f" (attempt {retry + 1} of {MAX_RETRIES + 1}): {error['type']}: {error['message']}"
            )
        # Set or deleted during the run (and not rolled back): that replaces this alarm.
        changed = self.stored(host) != stored
        if not changed and (error is None or retry >= MAX_RETRIES):
            self._write(host, None)
        return {
            "ran": True,
            "ok": error is None,
            "error": error,
            "changed": changed,
            "alarm": self.stored(host),
            "retry_count": retry,
            "scheduled": stored,
        }
