"""The catalog of live objects in one worker, and the gates of each object.

An `ObjectHost` is the activation of one object id in this worker: its instance,
its database, the queue of events waiting to start, and the events in flight.
Lifecycle (`HostState`): LOADING -> ACTIVE -> (HIBERNATED | GONE). The catalog
holds at most one host per id, and only for ids of shards this worker owns; with
shard ownership that makes one live instance per id in the whole runtime.

Gates (modelled on workerd's io-gate):

* Order: events start in arrival order. A per-object runner pops the queue and
  starts each event with `nursery.start`, which returns only once the new event
  has run up to its first real yield, so the next event cannot overtake it. An
  event that arrives while nothing is queued or starting, the gate is open and the
  instance is built runs in its caller's task instead (`run_inline`: no task spawned,
  the usual case of one request at a time); it is next in order anyway.
* Input gate: storage calls are synchronous on the worker's trio thread, so no
  other event of the object starts while one runs. At any other await the next
  event may start (interleaving, as in Cloudflare). `block_concurrency_while` and
  `transaction` hold `gate` so the runner starts nothing until they finish.
* Write coalescing: the first write of a batch opens a SQLite transaction and
  hands the object to the worker's committer (`commits.py`), a trio instrument
  that commits between two loop turns, when every task stands at an await; so
  every write between two non-storage awaits commits together, and several
  objects' commits (fsyncs) due at once run in parallel on threads.
* Output gate: replies, RPC results and WebSocket sends wait for the commit of
  every write made before them: an event commits before its reply is released, and
  `ws.send` during an open transaction is queued until the commit. If a commit
  fails, queued output is dropped, callers get `ObjectResetError`, and the object
  is reset.

Invariant: `not host.db.in_txn` implies `not host.pending_output`.
"""

from __future__ import annotations

import contextvars
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from stateroom._errors import DurableObjectError, ObjectResetError, OverloadedError
from stateroom._protocol import Target

from .gates import InputGate
from .storage import Database


class Counters:
    """Usage meters of one object since they were last reported (billing reads these).

    requests: fetch + RPC + alarm events; ws_messages_in: socket messages delivered;
    cpu_ms: thread CPU time spent in events; rows_read / rows_written: from SQL
    cursors and KV calls.
    """

    __slots__ = ("requests", "ws_messages_in", "cpu_ms", "rows_read", "rows_written")

    def __init__(self) -> None:
        self.requests = 0
        self.ws_messages_in = 0
        self.cpu_ms = 0.0
        self.rows_read = 0
        self.rows_written = 0


class HostState(enum.Enum):
    LOADING = "loading"
    ACTIVE = "active"
    HIBERNATED = "hibernated"
    GONE = "gone"


class Event:
    """One delivery to an object (fetch, RPC, alarm, socket event)."""

    __slots__ = (
        "fn",
        "request_id",
        "wrote",
        "committed",
        "done",
        "result",
        "error",
        "scope",
        "generation",
    )

    def __init__(self, fn: Callable[[Any], Awaitable[Any]], request_id: int | None) -> None:
        self.fn = fn
        self.request_id = request_id
        # True once this event wrote in the open (uncommitted) transaction.
        self.wrote = False
        # True once a write of this event is durable (a failure is then not retryable).
        self.committed = False
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.scope: trio.CancelScope | None = None
        # Host generation the event started under; a reset bumps the host's.
        self.generation = -1

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


CURRENT_EVENT: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "stateroom_current_event", default=None
)


class ObjectHost:
    def __init__(self, worker: Any, target: Target, cls: type, db: Database) -> None:
        self.worker = worker
        self.target = target
        self.cls = cls
        self.db = db
        db.on_first_write = self._on_first_write
        db.on_txn_lost = self._on_txn_lost
        db.on_commit_done = self.finish_background_commit
        self.state = HostState.LOADING
        # The user's DurableObject instance; None until constructed / after reset.
        self.instance: Any = None
        self.ctx: Any = None
        # Events waiting to start, in arrival order.
        self.queue: deque[Event] = deque()
        # Events started and not finished.
        self.inflight: set[Event] = set()
        # Closed by block_concurrency_while / transaction: no event starts meanwhile.
        # Reentrant for its holder; entering it open does not yield (see gates.py).
        self.gate = InputGate()
        # True while the runner task is draining `queue`.
        self.runner_active = False
        # Output held back until the open transaction commits (callables to run).
        self.pending_output: list[Callable[[], None]] = []
        self.flush_scheduled = False
        # Set (and replaced) at every commit and reset: wakes `wait_durable` callers.
        self._durable = trio.Event()
        # Nesting depth of storage.transaction(); the flusher never commits inside one.
        self.txn_depth = 0
        # True once a task other than the transaction's holder wrote inside it (a
        # rollback then resets the object; see storage_api.py).
        self.txn_foreign_writes = False
        # Bumped at every reset; events of an older generation fail.
        self.generation = 0
        # Pending ctx.wait_until tasks.
        self.waiting = 0
        self.last_used = trio.current_time()
        # Usage since the last report to the supervisor (see meters).
        self.counters = Counters()
        # True while the instance runs code of a deployment older than the worker's;
        # set at activation, cleared when `redeploy.retire` drops the instance.
        self.stale = False
        # Woken whenever an event finishes or a wait_until task ends (redeploy waits here).
        self.settled = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------- events

    def submit(self, event: Event) -> None:
        limit = self.worker.settings.get("max_queued_events", 1000)
        if len(self.queue) >= limit:
            raise OverloadedError(
                f"object {self.target.id[:16]}… has {len(self.queue)} queued events (limit {limit})"
            )
        self.queue.append(event)
        self.last_used = trio.current_time()
        if not self.runner_active:
            self.runner_active = True
            self.worker.nursery.start_soon(self._run_queue)

    async def _run_queue(self) -> None:
        try:
            while self.queue:
                async with self.gate:
                    pass
                if self.db.committing:
                    # No event starts while the object's commit runs on a thread.
                    await self._durable.wait()
                    continue
                if not self.queue:
                    break
                if self.stale and self.instance is not None:
                    # A newer deployment is active: finish in-flight events first.
                    await self.worker.redeploy.retire(self)
                    continue
                if self.instance is None:
                    # The constructor must see the object's parked WebSockets
                    # (sockets.py); returns at once when there are none.
                    await self.worker.sockets.wait_restored(self)
                    if not self.queue:
                        break
                event = self.queue.popleft()
                if self.instance is None:
                    cpu0 = time.thread_time()
                    try:
                        self.worker.construct(self)
                    except BaseException as exc:  # constructor failed: fail this event
                        event.finish(error=exc)
                        continue
                    finally:
                        self.counters.cpu_ms += (time.thread_time() - cpu0) * 1000.0
                await self.worker.nursery.start(self._run_event, event)
        finally:
            self.runner_active = False

    def can_run_inline(self) -> bool:
        """True when an event arriving now may run in its caller's task at once.

        That is when it would be the next to start anyway: nothing is queued or
        being started, the gate is open, and the instance is built from the current
        deployment. Not inside another event's task (`CURRENT_EVENT` set): the caller's
        steps would then include this event's work (CPU meters, CPU limit).
        """
        return (
            not self.queue
            and not self.runner_active
            and self.instance is not None
            and not self.stale
            and self.gate.owner is None
            and not self.db.committing
            and CURRENT_EVENT.get() is None
        )

    async def run_inline(self, event: Event) -> None:
        """Run `event` in the current task (see `can_run_inline`); returns when done.

        Same steps as an event the runner starts, without spawning a task: the
        common case of one request at a time to an idle object.
        """
        self.last_used = trio.current_time()
        await self._run_event(event)

    async def _run_event(self, event: Event, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        event.generation = self.generation
        self.inflight.add(event)
        token = CURRENT_EVENT.set(event)
        try:
            with trio.CancelScope() as scope:
                event.scope = scope
                task_status.started()
                try:
                    result = await self.worker.metered(self, event.fn(self.instance))
                    if event.generation != self.generation:
                        raise ObjectResetError(
                            "the object was reset during this event",
                            retryable=not event.committed,
                        )
                    await self.wait_durable()
                    if event.generation != self.generation:
                        raise ObjectResetError(
                            "the object was reset before this event's writes committed",
                            retryable=not event.committed,
                        )
                    event.finish(result=result)
                except ObjectResetError as exc:
                    event.finish(error=exc)
                except DurableObjectError as exc:
                    if event.generation == self.generation:
                        await self.wait_durable()
                    event.finish(error=exc)
                except Exception as user_error:
                    # User errors do not undo writes already made (SPEC §5).
                    if event.generation == self.generation:
                        await self.wait_durable()
                    error: BaseException = user_error
                    if event.generation != self.generation:
                        error = ObjectResetError(
                            "the object was reset during this event",
                            retryable=not event.committed,
                        )
                    event.finish(error=error)
            if scope.cancelled_caught and event.wrote and event.generation == self.generation:
                # Cancelled after writing (e.g. in a `finally`): the write commits with
                # the next batch; announce it before the event's reply (SPEC §8).
                await self.wait_durable()
            if scope.cancelled_caught and not event.done.is_set():
                event.finish(
                    error=ObjectResetError(
                        "the object was reset during this event", retryable=not event.committed
                    )
                )
        finally:
            CURRENT_EVENT.reset(token)
            self.inflight.discard(event)
            self.settled.unpark_all()
            self.last_used = trio.current_time()
            if not event.done.is_set():
                event.finish(
                    error=ObjectResetError("event abandoned", retryable=not event.committed)
                )

    # ------------------------------------------------------------- commit / gates

    def note_write(self) -> None:
        event = CURRENT_EVENT.get()
        if event is not None:
            event.wrote = True

    def _on_first_write(self) -> None:
        self.schedule_flush()

    def _on_txn_lost(self, reason: str) -> None:
        """SQLite rolled back the open transaction by itself: the turn's writes are gone."""
        self.reset(reason)

    def schedule_flush(self) -> None:
        """Have the committer (commits.py) commit the open transaction at the end of
        this loop turn."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.worker.committer.add(self)

    async def wait_durable(self) -> None:
        """Output gate: return once every write made so far is committed.

        The commit itself happens in the committer, at the end of the loop turn
        (group commit). If the object is reset meanwhile the caller sees its
        generation change (or is cancelled).
        """
        if not self.db.in_txn:
            return
        if self._alone():
            # The worker's only request and the only open transaction: nothing could
            # join a group commit, and the committer would commit it inline at the
            # end of this turn, then wake the loop to resume this task. Committing
            # here saves that loop turn and the wake-up.
            self.commit_quietly()
            return
        waiter = self._durable
        self.schedule_flush()
        await waiter.wait()

    def _alone(self) -> bool:
        """True when this object's commit can run now, in the current task (`wait_durable`)."""
        pending = self.worker.committer.pending
        return (
            not self.queue
            and not self.txn_depth
            and not self.db.committing
            and (not pending or (len(pending) == 1 and self in pending))
            and self.worker.requests_in_flight() <= 1
        )

    def commit_quietly(self) -> None:
        try:
            self.commit()
        except ObjectResetError:
            pass

    def commit(self) -> None:
        """Commit the open transaction and release held output. On failure: reset."""
        if not self.begin_commit():
            self._released()
            return
        cpu0 = time.thread_time()
        error: BaseException | None = None
        try:
            self.db.commit()
        except Exception as exc:  # noqa: BLE001 - handled by end_commit
            error = exc
        self.end_commit(error, time.thread_time() - cpu0)

    def begin_commit(self) -> bool:
        """The trio-thread steps before a COMMIT; False when there is nothing to commit.

        Announces the writing events' requests first: from here on a crash may
        leave the write durable, so their failures are no longer retryable (SPEC §8).
        """
        if self.db.committing:
            self.finish_background_commit()
        if self.txn_depth or not self.db.in_txn:
            return False
        self.worker.fault_point("before_commit", self)
        announce = []
        for ev in self.inflight:
            if ev.wrote:
                ev.wrote = False
                if not ev.committed:
                    ev.committed = True
                    if ev.request_id is not None:
                        announce.append(ev.request_id)
        if announce:
            self.worker.notify_committed(announce)
        return True

    def commit_in_background(self, pool: Any) -> bool:
        """Start committing on a committer thread (commits.py); False if nothing to commit.

        Until it ends (`finish_background_commit`, called from the trio thread when
        the thread is done, or earlier by whoever needs the connection) the input
        gate stays closed to new events, output stays held and `wait_durable` waits.
        """
        if not self.begin_commit():
            self._released()
            return False
        future = self.db.commit_in_background(pool)
        token = trio.lowlevel.current_trio_token()

        def done(_future: Any) -> None:
            try:
                token.run_sync_soon(self._finish_from_thread)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(done)
        return True

    def _finish_from_thread(self) -> None:
        # Runs as a trio `run_sync_soon` callback, where an exception would end the
        # whole worker: one object's trouble stays with that object.
        try:
            self.finish_background_commit()
        except Exception as exc:  # noqa: BLE001
            self.worker.log(f"ending a commit of {self.target.id[:12]} failed: {exc!r}")

    def finish_background_commit(self) -> None:
        """End a background commit on the trio thread (waiting for it if need be)."""
        result = self.db.finish_commit()
        if result is None:
            return  # already ended
        try:
            self.end_commit(*result)
        except ObjectResetError:
            pass  # the object was reset: its events fail with this

    def end_commit(self, error: BaseException | None, cpu_s: float) -> None:
        """The trio-thread steps after `db.commit()` (which raised `error`, or not)."""
        self.counters.cpu_ms += cpu_s * 1000.0
        if error is not None:
            self.reset(f"commit failed: {error}")
            raise ObjectResetError(f"commit failed: {error}", retryable=False) from None
        self.worker.fault_point("after_commit", self)
        self._released()

    def _released(self) -> None:
        """Everything written so far is durable: wake waiters, release held output."""
        if self.txn_depth:
            return
        self._durable.set()
        self._durable = trio.Event()
        if self.pending_output:
            out, self.pending_output = self.pending_output, []
            for fn in out:
                fn()

    def send_output(self, fn: Callable[[], None]) -> None:
        """Run `fn` (an outgoing message) once earlier writes are durable."""
        if self.db.in_txn:
            self.pending_output.append(fn)
        else:
            fn()

    async def block_concurrency_while(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        async with self.gate:
            generation = self.generation
            try:
                with trio.fail_after(30):
                    return await fn()
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    raise
                if generation == self.generation:
                    self.reset(f"block_concurrency_while failed: {exc!r}")
                if isinstance(exc, trio.TooSlowError):
                    raise ObjectResetError(
                        "block_concurrency_while exceeded its 30 s limit"
                    ) from None
                raise

    def reset(self, reason: str) -> None:
        """Discard the instance and uncommitted writes; fail events in flight."""
        if self.db.committing:
            self.finish_background_commit()  # what it committed stays committed
        self.generation += 1
        self._durable.set()
        self._durable = trio.Event()
        self.pending_output.clear()
        self.txn_depth = 0
        # The committer finds nothing open for the old generation; let new writes re-add it.
        self.flush_scheduled = False
        try:
            self.db.rollback()
        finally:
            self.db.close()
        self.instance = None
        self.ctx = None
        self.state = HostState.LOADING
        for ev in list(self.inflight):
            ev.finish(error=ObjectResetError(f"object reset: {reason}", retryable=not ev.committed))
            if ev.scope is not None:
                ev.scope.cancel()

    # ------------------------------------------------------------- idleness

    def is_idle(self) -> bool:
        # runner_active covers an event popped from the queue but not yet in flight.
        return (
            not self.queue
            and not self.runner_active
            and not self.inflight
            and not self.waiting
            and not self.gate.locked()
        )

    def idle_for(self) -> float:
        if not self.is_idle():
            return 0.0
        return trio.current_time() - self.last_used

    def close(self) -> None:
        """Evict: drop the instance, close the database (no event may be running)."""
        self.state = HostState.GONE
        self.instance = None
        self.ctx = None
        if self.db.exists() and self.db.is_empty() and not self.worker.has_alarm(self):
            self.db.remove_files()
        else:
            self.db.close()
