"""The alarm index and its scheduler: when to wake which object for its alarm.

Every object's alarm is stored in the object's own database (the truth; see
`stateroom.worker.alarms`). The supervisor keeps an *index* of them so it can wake
objects that are evicted or hibernated, and after restarts of any process:

* durable: the `alarms` table of the runtime database, one row per object
  `(ns_key, id, time, retry, scheduled)`: fire at `time`; the attempt is number
  `retry` for the alarm scheduled at `scheduled`;
* in memory: one `_Alarm` per row plus a heap ordered by fire time; the scheduler
  task sleeps on one timer until the earliest entry is `LEAD_MS` from due (never
  polling objects), then sends `RunAlarm(not_before=time)` to the worker owning the
  object's shard, which holds it until that time (`stateroom.worker.alarms`).

Why ahead of time: on a busy machine each hop between processes waits for a CPU
(a timer wake-up in the supervisor, its writer, the worker's reader, the task that
runs the alarm), and those waits add up to tens or hundreds of milliseconds. Sent
ahead, they overlap the wait for the alarm's time; what is left on the path from
due time to handler is one timer wake-up in the worker. The worker also opens an
evicted object's database while it holds the alarm.

The index is a hint the worker re-checks: `RunAlarm` runs the handler only if the
object's stored alarm is due, so a stale entry costs a wake-up, never an early or
extra run. The index must however never be *later* than the truth for an alarm a
caller has seen acknowledged. Workers report each committed alarm (`AlarmSet`)
through the object's output gate, and the reply to the caller follows it on the same
connection; so when an `AlarmSet` makes an entry earlier (or new), its row is
committed before any other task takes a step (`_flush_before_next_step`), which is
before that reply can travel on, and every such row of one read shares one commit.
Changes that only delay or remove an entry (the outcome of a run, a deletion, a
retry) are committed in batches within `FLUSH_DELAY`; a crash that loses them leaves
an earlier entry behind, which is safe. An object that starts with an alarm stored
re-reports it (`AlarmSet(resync=True)`), which adds the entry if it is missing (a
commit whose report died with its worker).

Firing: at most one `RunAlarm` per object at a time (`_Alarm.running`, from the
moment it is sent, hold included); at most `MAX_IN_FLIGHT` at once. Outcome:
* the handler succeeded, or the alarm was set/deleted meanwhile: the index takes
  the object's alarm as the worker reports it (usually none);
* the worker died while it held the alarm (before `not_before`): nothing ran; it
  is fired again for the same time, no retry counted;
* the handler raised, the object was reset, or the worker died during it: retry
  k = 1..6 is scheduled `alarm_retry_base * 2^(k-1)` s (2^k s by default) after
  the failure, plus 0-25 % jitter; after the sixth failed retry the alarm is dropped
  (the worker clears it; after a crash the supervisor asks it to: `expire`);
* the worker was not ready or the object overloaded: fired again shortly, no retry
  counted.

Invariants:
  * `self.alarms[key].time` is None only while that alarm is running.
  * not `e.running` and `e.time is not None` implies a heap item `(e.time, e.seq, key)`.
  * `self.durable` mirrors the committed rows of the `alarms` table.
"""

from __future__ import annotations

import collections
import heapq
import math
import random
import sys
import time
from typing import Any

import trio

from stateroom import _codec
from stateroom._errors import (
    BindingNotFoundError,
    DurableObjectError,
    ObjectResetError,
    WorkerCrashedError,
    error_from_fields,
)
from stateroom._protocol import AlarmSet, HttpResponse, RunAlarm, Target

# Handler failures retried at most this many times (SPEC §5).
MAX_RETRIES = 6
# RunAlarm requests in flight at once (bounds memory when many alarms are due).
MAX_IN_FLIGHT = 2048
# RunAlarm leaves this long before the alarm's time (ms); the worker holds it until
# then. Covers the supervisor-to-handler delay of a loaded machine (measured up to
# ~250 ms at p99 with 2 cores oversubscribed; see bench/alarms.py).
LEAD_MS = 250
# The timer re-reads the wall clock at least this often (seconds), in case it jumps.
MAX_SLEEP = 30.0
# How long delay-only index changes wait to be committed together (seconds).
FLUSH_DELAY = 0.5
# When the owning worker is not ready or the object is overloaded: fire again after (ms).
NOT_READY_DELAY_MS = 500

Key = tuple[int, str]


def now_ms() -> float:
    return time.time() * 1000.0


def retry_delay_s(k: int, base: float, rng: random.Random) -> float:
    """Delay before retry `k` (1..6): base * 2^(k-1) s plus 0-25 % jitter, never less."""
    return base * 2 ** (k - 1) * (1.0 + rng.uniform(0.0, 0.25))


class _Alarm:
    """One object's entry in the index."""

    __slots__ = (
        "key",
        "name",
        "time",
        "scheduled",
        "retry",
        "expire",
        "seq",
        "running",
        "set_during_run",
        "idle",
    )

    def __init__(self, key: Key, name: str | None) -> None:
        self.key = key
        # The object's name when known (so `ctx.id.name` works when it is woken).
        self.name = name
        # When to fire next (epoch ms); None only while running after a deletion.
        self.time: int | None = None
        # The alarm time the attempt is for (AlarmInfo.scheduled_time).
        self.scheduled = 0
        # Attempt number of the next firing: 0 first, 1..6 retries.
        self.retry = 0
        # True: the next firing only drops the stored alarm (retries exhausted by crashes).
        self.expire = False
        # Identifies the live heap item; bumped at every (re)schedule.
        self.seq = 0
        # True while a RunAlarm for this object is in flight.
        self.running = False
        # True once an AlarmSet arrived during the current run (it replaces the alarm).
        self.set_during_run = False
        # While running: set when the run ends (None otherwise, to keep entries small).
        self.idle: trio.Event | None = None


class AlarmScheduler:
    """The supervisor extension owning the alarm index (installed by `extensions.py`)."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        self.conn = sup.db.conn
        self.retry_base = float(sup.settings.alarm_retry_base)
        self.rng = random.Random()
        # (ns_key, id) -> entry; the in-memory index.
        self.alarms: dict[Key, _Alarm] = {}
        # Heap of (time, seq, key); items whose seq is not the entry's are stale.
        self._heap: list[tuple[int, int, Key]] = []
        self._seq = 0
        # key -> time of the committed row (see the invariants).
        self.durable: dict[Key, int] = {}
        # Row changes not committed yet: key -> (ns_key, id, time, retry, scheduled) or None.
        self._staged: dict[Key, tuple[int, str, int, int, int] | None] = {}
        self._flush_soon = trio.Event()
        # Set to make the timer re-read the heap; `_armed` is the time it sleeps until.
        self._wake = trio.Event()
        self._armed = math.inf
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        # Installed while rows wait to be committed before the next task step.
        self._barrier = _CommitBeforeNextStep(self)
        self._barrier_armed = False
        # ns_key -> class name for the current deployment version.
        self._classes: dict[int, str] = {}
        self._classes_version: int | None = None
        self.nursery: trio.Nursery | None = None
        self.stopping = False
        # RunAlarm requests sent (statistics).
        self.fired = 0
        # How late (ms) the last scheduled RunAlarms left the supervisor, against
        # `LEAD_MS` before their time (statistics).
        self.dispatch_late: collections.deque[float] = collections.deque(maxlen=10_000)

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Read the durable index (at start): overdue entries fire at once."""
        rows = self.conn.execute(
            "SELECT a.ns_key, a.id, a.time, a.retry, a.scheduled, n.name FROM alarms a"
            " LEFT JOIN names n ON n.ns_key = a.ns_key AND n.id = a.id"
        )
        for ns_key, oid, t, retry, scheduled, name in rows:
            key = (int(ns_key), str(oid))
            e = _Alarm(key, name)
            e.time, e.retry, e.scheduled = int(t), int(retry), int(scheduled or t)
            self._seq += 1
            e.seq = self._seq
            self.alarms[key] = e
            self.durable[key] = e.time
            self._heap.append((e.time, e.seq, key))
        heapq.heapify(self._heap)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.load()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._serve_flushes)
                task_status.started()
                await self._serve_timer()
        finally:
            self._flush()

    async def stop(self) -> None:
        """Fire nothing new; commit what is staged (in-flight runs finish meanwhile)."""
        self.stopping = True
        self._flush()

    # ------------------------------------------------------------------ the timer

    async def _serve_timer(self) -> None:
        while True:
            self._wake = trio.Event()
            head = self._head()
            if head is None or self.stopping:
                self._armed = math.inf
                await self._wake.wait()
                continue
            delay = (head - LEAD_MS - now_ms()) / 1000.0
            if delay > 0:
                self._armed = head
                with trio.move_on_after(min(delay, MAX_SLEEP)):
                    await self._wake.wait()
                continue
            self._armed = -math.inf
            t, seq, key = heapq.heappop(self._heap)
            # Every due alarm goes out in this one step while slots are free: a
            # second of 1,000 due alarms must not take 1,000 loop turns to leave.
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._slots.acquire()
            e = self.alarms.get(key)
            if e is None or e.seq != seq or e.running or e.time != t:
                self._slots.release()
                continue
            assert self.nursery is not None
            self.nursery.start_soon(self._fire_in_slot, e)

    def _head(self) -> int | None:
        """Earliest live heap time, dropping stale items on the way."""
        heap = self._heap
        while heap:
            t, seq, key = heap[0]
            e = self.alarms.get(key)
            if e is None or e.seq != seq or e.running or e.time != t:
                heapq.heappop(heap)
                continue
            return t
        return None

    def _schedule(self, e: _Alarm, t: int) -> None:
        e.time = int(t)
        self._seq += 1
        e.seq = self._seq
        heapq.heappush(self._heap, (e.time, e.seq, e.key))
        if len(self._heap) > 2 * len(self.alarms) + 1024:
            self._rebuild_heap()
        if e.time < self._armed:
            self._wake.set()

    def _rebuild_heap(self) -> None:
        self._heap = [
            (e.time, e.seq, k)
            for k, e in self.alarms.items()
            if e.time is not None and not e.running
        ]
        heapq.heapify(self._heap)
        self._wake.set()

    # ------------------------------------------------------------------ firing

    def _target(self, key: Key, name: str | None) -> Target | None:
        cur = self.sup.current
        if cur is None:
            return None
        if self._classes_version != cur["version"]:
            self._classes = {int(k): c for c, (k, _s) in cur["manifest"]["namespaces"].items()}
            self._classes_version = cur["version"]
        class_name = self._classes.get(key[0])
        return Target(class_name, key[1], name) if class_name is not None else None

    async def _fire_in_slot(self, e: _Alarm) -> None:
        try:
            target = self._target(e.key, e.name)
            if target is None:
                # Its class is not deployed (any more): dormant until the next deploy.
                return
            await self._fire(e, target)
        finally:
            self._slots.release()

    async def _fire(
        self, e: _Alarm, target: Target, *, force: bool = False
    ) -> tuple[dict[str, Any] | None, BaseException | None]:
        """Send one RunAlarm for `e` and settle the index from its outcome.

        Returns (outcome dict, None) or (None, the failure). Never raises for a
        failed run. Runs in the scheduler's nursery, so it is never cancelled halfway
        except at shutdown.
        """
        e.running = True
        e.set_during_run = False
        e.idle = trio.Event()
        expire = e.expire
        scheduled, retry = e.scheduled, e.retry
        # The worker starts the run no earlier than this (it holds RunAlarm until then).
        not_before = 0 if force or e.time is None else e.time
        outcome: dict[str, Any] | None = None
        failure: BaseException | None = None
        self.fired += 1
        if not force and e.time is not None:
            self.dispatch_late.append(now_ms() - (e.time - LEAD_MS))
        try:
            reply = await self.sup.pool.request(
                self.sup.owner(target),
                lambda rid: RunAlarm(rid, target, scheduled, retry, force, expire, not_before),
            )
            if reply.ok:
                outcome = _codec.decode(reply.value)
            else:
                failure = error_from_fields(reply.error or {})
        except Exception as exc:  # noqa: BLE001 - any failure is settled, never fatal
            failure = exc
        finally:
            e.running = False
            idle, e.idle = e.idle, None
            if idle is not None:
                idle.set()
        try:
            self._settle(e, outcome, failure, not_before)
        except Exception as exc:  # noqa: BLE001 - keep the scheduler alive; log
            _log(f"settling the alarm of {e.key[1][:12]} failed: {exc!r}")
        return outcome, failure

    def _settle(
        self,
        e: _Alarm,
        outcome: dict[str, Any] | None,
        failure: BaseException | None,
        not_before: int = 0,
    ) -> None:
        if self.alarms.get(e.key) is not e:
            return  # the object (or its class) was deleted meanwhile
        now = now_ms()
        if failure is not None:
            if e.set_during_run:
                # A committed set/delete during the run replaces the alarm that ran.
                self._keep_current(e)
            elif isinstance(failure, WorkerCrashedError) and now < not_before:
                # The worker died while it held the alarm: the handler never started.
                self._schedule(e, not_before)
            elif isinstance(failure, (WorkerCrashedError, ObjectResetError)) or not isinstance(
                failure, DurableObjectError
            ):
                _log(f"alarm of {e.key[1][:12]} failed: {type(failure).__name__}: {failure}")
                self._retry(e, now)
            elif isinstance(failure, BindingNotFoundError):
                self._remove(e)
            else:
                # Worker restarting, object overloaded: nothing ran; try again shortly.
                self._schedule(e, math.ceil(now + NOT_READY_DELAY_MS))
            return
        assert outcome is not None
        if not outcome["ran"] or outcome["ok"] or outcome["changed"]:
            self._set_from_object(e, outcome.get("alarm"))
        elif outcome["retry_count"] >= MAX_RETRIES:
            self._set_from_object(e, outcome.get("alarm"))
        else:
            e.scheduled = int(outcome["scheduled"])
            e.retry = int(outcome["retry_count"])
            self._retry(e, now)

    def _retry(self, e: _Alarm, now: float) -> None:
        k = e.retry + 1
        if k > MAX_RETRIES:
            if e.expire:
                _log(f"alarm of {e.key[1][:12]} could not be dropped; removing its index entry")
                self._remove(e)
            else:
                e.expire = True
                self._schedule(e, math.ceil(now))
            return
        e.retry = k
        delay = retry_delay_s(k, self.retry_base, self.rng)
        self._schedule(e, math.ceil(now + delay * 1000.0))
        self._persist(e)

    def _keep_current(self, e: _Alarm) -> None:
        if e.time is None:
            self._remove(e)
        else:
            self._schedule(e, e.time)

    def _set_from_object(self, e: _Alarm, alarm: int | None) -> None:
        """The object reported its stored alarm: the index follows it."""
        e.expire = False
        if alarm is None:
            self._remove(e)
            return
        e.scheduled = int(alarm)
        e.retry = 0
        self._schedule(e, int(alarm))
        self._persist(e)

    # ------------------------------------------------------------------ index changes

    def _new(self, key: Key, name: str | None) -> _Alarm:
        e = _Alarm(key, name)
        self.alarms[key] = e
        return e

    def _remove(self, e: _Alarm) -> None:
        if self.alarms.get(e.key) is e:
            del self.alarms[e.key]
        e.time = None
        self._stage_delete(e.key)

    def _persist(self, e: _Alarm) -> None:
        """Stage e's row; commit at once if it makes the durable index earlier."""
        assert e.time is not None
        key = e.key
        self._staged[key] = (key[0], key[1], e.time, e.retry, e.scheduled)
        durable = self.durable.get(key)
        if durable is None or e.time < durable:
            self._flush_before_next_step()
        else:
            self._flush_soon.set()

    def _flush_before_next_step(self) -> None:
        """Commit what is staged before any other task takes a step.

        Called while the connection reader handles a worker's messages: the reply
        that follows an `AlarmSet` on that connection can only reach its caller
        through another task's step, so committing at the next step boundary keeps
        "index durable before the acknowledgement" while every `AlarmSet` of one read
        shares one commit.
        """
        if not self._barrier_armed:
            self._barrier_armed = True
            trio.lowlevel.add_instrument(self._barrier)

    def _stage_delete(self, key: Key) -> None:
        if key in self.durable or key in self._staged:
            self._staged[key] = None
            self._flush_soon.set()

    def _flush(self) -> None:
        """Commit every staged change in one transaction (fsynced)."""
        if not self._staged:
            return
        staged, self._staged = self._staged, {}
        puts = [row for row in staged.values() if row is not None]
        dels = [key for key, row in staged.items() if row is None]
        try:
            with self.conn:
                if puts:
                    self.conn.executemany(
                        "INSERT OR REPLACE INTO alarms(ns_key, id, time, retry, scheduled)"
                        " VALUES(?,?,?,?,?)",
                        puts,
                    )
                if dels:
                    self.conn.executemany("DELETE FROM alarms WHERE ns_key=? AND id=?", dels)
        except Exception as exc:  # noqa: BLE001 - keep serving; try again at the next flush
            _log(f"could not commit the alarm index: {exc!r}")
            for key, row in staged.items():
                self._staged.setdefault(key, row)
            self._flush_soon.set()
            return
        for row in puts:
            self.durable[(row[0], row[1])] = row[2]
        for key in dels:
            self.durable.pop(key, None)

    async def _serve_flushes(self) -> None:
        while True:
            await self._flush_soon.wait()
            self._flush_soon = trio.Event()
            # Batch: changes arriving within FLUSH_DELAY commit together.
            await trio.sleep(FLUSH_DELAY)
            self._flush()

    # ------------------------------------------------------------------ extension hooks

    def on_worker_message(self, worker: Any, msg: Any) -> bool:
        if not isinstance(msg, AlarmSet):
            return False
        target = msg.target
        key = (int(msg.ns_key), target.id)
        if target.name is not None:
            self.sup.note_name(key[0], target.id, target.name)
        e = self.alarms.get(key)
        if msg.resync:
            # The object started with an alarm stored: add the entry only if missing.
            if e is None and msg.time is not None:
                e = self._new(key, target.name)
                e.scheduled = int(msg.time)
                self._schedule(e, e.scheduled)
                self._persist(e)
            return True
        if e is None:
            if msg.time is None:
                self._stage_delete(key)
                return True
            e = self._new(key, target.name)
        elif target.name is not None and e.name is None:
            e.name = target.name
        e.expire = False
        if e.running:
            e.set_during_run = True
        if msg.time is None:
            if e.running:
                e.time = None
                self._stage_delete(key)
            else:
                self._remove(e)
            return True
        e.scheduled = int(msg.time)
        e.retry = 0
        if e.running:
            e.time = e.scheduled
        else:
            self._schedule(e, e.scheduled)
        self._persist(e)
        return True

    def on_object_deleted(self, ns_key: int, object_id: str) -> None:
        key = (int(ns_key), object_id)
        e = self.alarms.get(key)
        if e is not None:
            self._remove(e)
        else:
            self._stage_delete(key)
        self._flush()

    async def on_deploy(self, dep: dict[str, Any], plan: dict[str, Any]) -> None:
        """Drop the entries of deleted classes; wake entries that were dormant."""
        live = {int(k) for (k, _s) in dep["manifest"]["namespaces"].values()}
        self._classes_version = None
        for key in [k for k in self.alarms if k[0] not in live]:
            e = self.alarms.pop(key)
            e.time = None
        for key in [k for k in self._staged if k[0] not in live]:
            del self._staged[key]
        self._flush()
        with self.conn:
            self.conn.execute(
                "DELETE FROM alarms WHERE ns_key NOT IN"
                " (SELECT key FROM namespaces WHERE deleted IS NULL)"
            )
        self.durable = {k: t for k, t in self.durable.items() if k[0] in live}
        self._rebuild_heap()

    async def route(self, request: Any, parts: list[str], query: dict[str, str]) -> Any:
        if parts == ["v1", "alarms"] and request.method == "GET":
            return _json(self.stats())
        return None

    async def object_route(
        self, request: Any, target: Target, ns_key: int, rest: list[str], query: dict[str, str]
    ) -> Any:
        """`GET .../objects/{b}/{id}/alarm` and `POST .../objects/{b}/{id}/alarm/run`."""
        if rest == ["alarm"] and request.method == "GET":
            e = self.alarms.get((ns_key, target.id))
            if e is None:
                return _json({"time": None, "scheduled": None, "retry": 0, "running": False})
            return _json(
                {"time": e.time, "scheduled": e.scheduled, "retry": e.retry, "running": e.running}
            )
        if rest == ["alarm", "run"] and request.method == "POST":
            return _json(await self.run_now(ns_key, target))
        return None

    # ------------------------------------------------------------------ run now (testing kit)

    async def run_now(self, ns_key: int, target: Target) -> dict[str, Any]:
        """Run the object's stored alarm now, whatever its time, and wait for the handler.

        Returns {"ran", "ok", "error", "retry_count", "scheduled_time"}; raises the
        runtime error if the object could not be reached. Waits for a run in progress
        first, so handlers never overlap.
        """
        key = (int(ns_key), target.id)
        while True:
            e = self.alarms.get(key)
            if e is None or not e.running or e.idle is None:
                break
            await e.idle.wait()
        if e is None:
            e = self._new(key, target.name)
        assert self.nursery is not None
        done = trio.Event()
        box: list[Any] = [None, None]

        async def go() -> None:
            try:
                box[0], box[1] = await self._fire(e, target, force=True)
            finally:
                done.set()

        self.nursery.start_soon(go)
        await done.wait()
        outcome, failure = box
        if failure is not None:
            raise failure
        assert outcome is not None
        return {
            "ran": bool(outcome.get("ran")),
            "ok": outcome.get("ok"),
            "error": outcome.get("error"),
            "retry_count": outcome.get("retry_count"),
            "scheduled_time": outcome.get("scheduled"),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "pending": sum(1 for e in self.alarms.values() if e.time is not None),
            "running": sum(1 for e in self.alarms.values() if e.running),
            "fired": self.fired,
            "dispatch_late_ms": _percentiles(self.dispatch_late),
            "durable": len(self.durable),
            "next": self._head(),
        }


class _CommitBeforeNextStep(trio.abc.Instrument):
    """A one-shot trio instrument: commits the staged index rows, then removes itself."""

    def __init__(self, scheduler: AlarmScheduler) -> None:
        self.scheduler = scheduler

    def before_task_step(self, task: Any) -> None:
        trio.lowlevel.remove_instrument(self)
        self.scheduler._barrier_armed = False
        self.scheduler._flush()


def _percentiles(values: Any) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)
    return {f"p{p}": round(s[min(len(s) - 1, len(s) * p // 100)], 3) for p in (50, 99, 100)}


def _json(obj: Any) -> HttpResponse:
    import json

    return HttpResponse(200, [("content-type", "application/json")], json.dumps(obj).encode())


def _log(message: str) -> None:
    print(f"stateroom: {message}", file=sys.stderr, flush=True)
