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

Parallel fsyncs: with `--durability full` each object's COMMIT ends in an fsync of
its own WAL. When several objects are due in the same iteration, their COMMITs
run at once on a small thread pool (APSW releases the GIL inside SQLite), so the
kernel overlaps the fsyncs (ext4 folds concurrent ones into one journal commit)
and the loop waits for the slowest instead of the sum. The trio thread blocks
until they are all done, so no other code touches those connections meanwhile;
the steps that must run on the trio thread (fault points, the `Committed`
announcement, waking the events, releasing held output) run before and after,
in `ObjectHost.begin_commit` / `end_commit`.

Invariant: a host is in `pending` iff it may hold an open transaction nobody has
arranged to commit; the hook never raises (trio would drop an instrument that
raises), errors reset their object in `end_commit`.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from typing import Any

import trio

from stateroom._errors import ObjectResetError

__all__ = ["Committer", "MAX_SPINS"]

# Loop iterations an object's commit may wait for its queued events to write.
MAX_SPINS = 16
# Threads committing different objects' transactions at once.
THREADS = 8


def _nothing() -> None:
    pass


def _commit_in_thread(db: Any) -> tuple[BaseException | None, float]:
    """`db.commit()` on a pool thread: (error, thread CPU seconds it took)."""
    start = time.thread_time()
    try:
        db.commit()
    except BaseException as exc:  # noqa: BLE001 - handed back to the trio thread
        return exc, time.thread_time() - start
    return None, time.thread_time() - start


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

        Returns True when it committed (or released) anything.
        """
        due = []
        for host, spins in list(self.pending.items()):
            if not host.db.in_txn or host.txn_depth:
                # Nothing open, or inside `storage.transaction` (its end re-adds it).
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
        if len(due) == 1 or not self.parallel:
            for host in due:
                host.commit_quietly()
        else:
            self._commit_together(due)
        return True

    def _commit_together(self, hosts: list[Any]) -> None:
        started = []
        for host in hosts:
            try:
                if host.begin_commit():
                    started.append(host)
                else:
                    host.commit_quietly()  # nothing to commit: release waiters
            except Exception as exc:  # noqa: BLE001 - this object only
                host.reset(f"commit failed: {exc}")
        if not started:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=THREADS, thread_name_prefix="stateroom-commit"
            )
        futures = [self._pool.submit(_commit_in_thread, h.db) for h in started[1:]]
        # The first one here, on the trio thread, while the others run.
        results = [_commit_in_thread(started[0].db)]
        results += [f.result() for f in futures]
        for host, (error, cpu_s) in zip(started, results, strict=True):
            try:
                host.end_commit(error, cpu_s)
            except ObjectResetError:
                pass  # the object was reset; its events fail with this error
