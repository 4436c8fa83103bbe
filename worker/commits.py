"""Group commit for every object of a worker, run between two turns of the trio loop.

A write opens a SQLite transaction on its object (`Database.write_conn`); the
object's writes then pile up in it until the *committer* commits it. The committer
is a trio instrument whose only hook is `before_io_wait`: trio calls it once per
loop iteration, after the batch of runnable tasks has run and before it polls for
I/O. At that moment every task stands at an await, so no object is in the middle
of a turn, and the transaction holds exactly the writes of whole turns: the writes
between two non-storage awaits commit together (SPEC §6), with no task spawned or
woken for the commit itself.

Group commit: while an object still has events queued that are about to run (and
trio has tasks ready, so the loop comes straight back), its commit waits up to
`MAX_SPINS` iterations so those events' writes join the same transaction and one
fsync releases them all. When the loop is about to sleep, everything commits.

The lone request. When an event that wrote ends while it is the worker's only
request and its object's transaction the only one open (`ObjectHost._alone`),
nothing could join a group commit: `wait_durable` commits right there, in the
event's task, instead of leaving it to this hook (which would then have to wake
the loop again to resume the task). Sequential requests to one object take this
path: worker CPU per request 373-445 -> 292-348 µs.

Where the COMMIT runs. Under `--durability process` there is no fsync to wait for:
every commit runs right here. Under `full` each COMMIT ends in an fsync of the
object's WAL, so the loop does not wait for it unless it has nothing else to do
(exactly one commit due and no task ready): otherwise each due object's COMMIT
runs on a small thread pool (`ObjectHost.commit_in_background`; APSW releases the
GIL inside SQLite), so different objects' fsyncs overlap (ext4 folds concurrent
ones into one journal commit) and the loop keeps serving other objects meanwhile.
While an object's COMMIT runs on a thread: no new event of it starts (its runner
waits, `can_run_inline` is False), its output stays held and `wait_durable`
waits (`db.in_txn` stays True until the end), and any use of its connection from
the trio thread first waits for the COMMIT to end (`Database.conn`), so the
connection is never used by two threads. The end (`finish_background_commit`:
fault point, waking the events, releasing held output) runs on the trio thread,
scheduled by the thread through the trio token. The steps before it (fault point,
the `Committed` announcement) ran on the trio thread too (`begin_commit`).

Invariant: a host is in `pending` iff it may hold an open transaction nobody has
arranged to commit; the hook never raises (trio would drop an instrument that
raises), errors reset their object.
"""

from __future__ import annotations

import concurrent.futures
import sys
from typing import Any

import trio

__all__ = ["Committer", "MAX_SPINS"]

# Loop iterations an object's commit may wait for its queued events to write.
MAX_SPINS = 16
# Threads committing different objects' transactions at once.
THREADS = 8


def _nothing() -> None:
    pass


class Committer(trio.abc.Instrument):
    """Commits every object's open transaction at the end of a loop turn."""

    def __init__(self, parallel: bool) -> None:
        # host -> iterations its commit has waited for queued events so far.
        self.pending: dict[Any, int] = {}
        # Commit several objects at once on threads (worth it only when a commit
        # waits for the disk, i.e. under `--durability full`).
        self.parallel = parallel
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def add(self, host: Any) -> None:
        """`host` has (or is about to have) writes to commit."""
        self.pending.setdefault(host, 0)

    def discard(self, host: Any) -> None:
        self.pending.pop(host, None)

    def before_io_wait(self, timeout: float) -> None:
        if not self.pending:
            return
        try:
            committed = self.run(may_wait=timeout == 0)
            if committed and timeout != 0:
                # trio computed this poll's timeout before calling us: the events
                # woken by the commit must not wait for it. A no-op callback writes
                # to trio's wakeup socket, so the poll returns at once.
                trio.lowlevel.current_trio_token().run_sync_soon(_nothing)
        except BaseException as exc:  # noqa: BLE001 - must never escape into trio
            print(f"stateroom worker: commit pass failed: {exc!r}", file=sys.stderr, flush=True)

    def run(self, may_wait: bool = False) -> bool:
        """Commit the pending transactions that are due (all of them unless `may_wait`).

        Returns True when it woke anyone here (a commit done on this thread).
        """
        due = []
        for host, spins in list(self.pending.items()):
            if not host.db.in_txn or host.txn_depth or host.db.committing:
                # Nothing open, inside `storage.transaction` (its end re-adds it),
                # or already committing (its end releases every waiter).
                del self.pending[host]
                host.flush_scheduled = False
                continue
            if may_wait and host.queue and spins < MAX_SPINS:
                self.pending[host] = spins + 1
                continue
            del self.pending[host]
            host.flush_scheduled = False
            due.append(host)
        if not due:
            return False
        if not self.parallel or (len(due) == 1 and not may_wait):
            # No fsync to wait for (`process`), or one commit while the loop has
            # nothing else to do: commit right here.
            for host in due:
                host.commit_quietly()
            return True
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=THREADS, thread_name_prefix="stateroom-commit"
            )
        released = False
        for host in due:
            try:
                released |= not host.commit_in_background(self._pool)
            except Exception as exc:  # noqa: BLE001 - this object only
                host.reset(f"commit failed: {exc}")
                released = True
        # Background commits wake the loop themselves when they end.
        return released
