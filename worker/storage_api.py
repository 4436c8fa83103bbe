"""`ctx.storage`: the storage API user code calls (async KV, sync KV, SQL, alarms, PITR).

This is a thin facade over the object's `storage.Database`; it adds what is about
the calling event rather than the file: marking the event as a writer (so the
output gate and the retry flags know), usage meters (`host.counters.rows_read /
rows_written`, which billing reads), and transactions.

Every coroutine here except `transaction` and `sync` completes without yielding to
trio (the work is a synchronous APSW call), which is what keeps the input gate
closed during storage operations and keeps the writes of one turn in one commit.

Transactions: `transaction(fn)` closes the input gate (reentrant, see `gates.py`)
and runs `fn(txn)` inside a SQLite savepoint of the open transaction. Leaving `fn`
normally releases the savepoint (its writes then commit with the turn); an
exception or `txn.rollback()` rolls back to it. Events already in flight may still
resume while `fn` awaits something else; if one of them writes inside the savepoint
and the transaction then rolls back, those writes cannot be kept apart, so the
object is reset (the other events fail; nothing half-done is committed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from stateroom._errors import ObjectResetError

from .catalog import ObjectHost

_MISSING: Any = object()


def _wrote(host: ObjectHost) -> None:
    host.note_write()
    gate = host.gate
    if host.txn_depth and gate.locked() and not gate.held_by_current_task():
        host.txn_foreign_writes = True


class SyncKv:
    """`ctx.storage.kv`: the synchronous KV API (same semantics as the async one)."""

    def __init__(self, host: ObjectHost) -> None:
        self._host = host

    def get(self, key: Any, **_options: Any) -> Any:
        """`get(key) -> value | None`; `get([keys]) -> dict` of present keys, in key order."""
        host = self._host
        if isinstance(key, (list, tuple)):
            out = host.db.kv_get_many(list(key))
            host.counters.rows_read += len(key)
            return out
        value = host.db.kv_get(key)
        host.counters.rows_read += 1
        return value

    def put(self, key: Any, value: Any = _MISSING, **_options: Any) -> None:
        """`put(key, value)` or `put({key: value, ...})` (at most 128 entries; all or none)."""
        host = self._host
        if isinstance(key, dict):
            if value is not _MISSING:
                raise TypeError("put({...}) takes no separate value")
            written = host.db.kv_put_many(key)
            if not written:
                return
        else:
            if value is _MISSING:
                raise TypeError("put(key, value) needs a value")
            host.db.kv_put(key, value)
            written = 1
        _wrote(host)
        host.counters.rows_written += written

    def delete(self, key: Any, **_options: Any) -> Any:
        """`delete(key) -> bool`; `delete([keys]) -> int` (how many existed)."""
        host = self._host
        keys = list(key) if isinstance(key, (list, tuple)) else [key]
        n = host.db.kv_delete_many(keys)
        if host.db.in_txn:
            _wrote(host)
        host.counters.rows_written += len(keys)
        return n if isinstance(key, (list, tuple)) else n == 1

    def list(self, **options: Any) -> dict[str, Any]:
        """Entries by UTF-8 byte order: start, start_after, end, prefix, reverse, limit."""
        for name in ("allow_concurrency", "no_cache"):
            options.pop(name, None)
        out = self._host.db.kv_list(**options)
        self._host.counters.rows_read += max(1, len(out))
        return out


class Transaction:
    """The `txn` passed to `storage.transaction(fn)`.

    `rollback()` undoes the transaction's writes at once and ends it: further calls
    on `txn` raise RuntimeError, and `transaction()` still returns `fn`'s result.
    """

    def __init__(self, storage: Storage, savepoint: str) -> None:
        self._storage = storage
        self._savepoint = savepoint
        # True once rollback() ran: the savepoint's writes are undone.
        self.rolled_back = False

    def _live(self) -> SyncKv:
        if self.rolled_back:
            raise RuntimeError("this transaction was rolled back")
        return self._storage.kv

    async def get(self, key: Any, **options: Any) -> Any:
        return self._live().get(key, **options)

    async def put(self, key: Any, value: Any = _MISSING, **options: Any) -> None:
        self._live().put(key, value, **options)

    async def delete(self, key: Any, **options: Any) -> Any:
        return self._live().delete(key, **options)

    async def list(self, **options: Any) -> dict[str, Any]:
        return self._live().list(**options)

    async def get_alarm(self) -> int | None:
        self._live()
        return await self._storage.get_alarm()

    async def set_alarm(self, when: Any) -> None:
        self._live()
        await self._storage.set_alarm(when)

    async def delete_alarm(self) -> None:
        self._live()
        await self._storage.delete_alarm()

    def rollback(self) -> None:
        """Undo every write of this transaction; the transaction is over."""
        if not self.rolled_back:
            self.rolled_back = True
            self._storage._rollback_to(self._savepoint)  # noqa: SLF001


class Storage:
    """`ctx.storage`: async KV, sync KV (`kv`), SQL (`sql`), alarms, bookmarks."""

    def __init__(self, host: ObjectHost) -> None:
        from .sql import SqlStorage

        self._host = host
        self.kv = SyncKv(host)
        self.sql = SqlStorage(host)

    # ---------------------------------------------------------------- KV

    async def get(self, key: Any, **options: Any) -> Any:
        return self.kv.get(key, **options)

    async def put(self, key: Any, value: Any = _MISSING, **options: Any) -> None:
        self.kv.put(key, value, **options)

    async def delete(self, key: Any, **options: Any) -> Any:
        return self.kv.delete(key, **options)

    async def list(self, **options: Any) -> dict[str, Any]:
        return self.kv.list(**options)

    async def delete_all(self, **_options: Any) -> None:
        """Delete every KV entry, every SQL table and the alarm (atomically)."""
        host = self._host
        host.db.delete_all()
        host.worker.alarms.delete(host)
        if host.db.in_txn:
            _wrote(host)

    async def sync(self) -> None:
        """Return once every earlier write is durable (at once inside a transaction)."""
        host = self._host
        if host.txn_depth:
            return
        if not host.queue:
            host.commit()  # nothing queued to share the commit with: now, no task switch
            return
        await host.wait_durable()

    # ---------------------------------------------------------------- transactions

    def _begin_savepoint(self) -> str:
        host = self._host
        host.db.write_conn()
        name = f"_stateroom_txn{host.txn_depth}"
        host.db._x(f"SAVEPOINT {name}")  # noqa: SLF001 - the runtime's own statement
        if host.txn_depth == 0:
            host.txn_foreign_writes = False
        host.txn_depth += 1
        return name

    def _rollback_to(self, name: str) -> None:
        """Undo the writes made since savepoint `name` (which stays open)."""
        host = self._host
        db = host.db
        db.forget_plans()  # a rolled-back schema change is undone
        conn = db.conn
        if conn is not None and db.in_txn and not conn.getautocommit():
            db._x(f"ROLLBACK TO {name}")  # noqa: SLF001
        if host.txn_foreign_writes:
            host.reset("a transaction rolled back after another event wrote inside it")
            raise ObjectResetError(
                "the object was reset: a transaction rolled back after another event"
                " wrote inside it",
                retryable=False,
            )

    def _end_savepoint(self, name: str, ok: bool) -> None:
        host = self._host
        generation = host.generation
        try:
            if not ok:
                self._rollback_to(name)
        finally:
            if host.generation == generation:
                host.txn_depth -= 1
                db = host.db
                conn = db.conn
                if conn is not None and db.in_txn and not conn.getautocommit():
                    db._x(f"RELEASE {name}")  # noqa: SLF001
                if host.txn_depth == 0 and db.in_txn:
                    host.schedule_flush()

    async def transaction(self, fn: Callable[[Transaction], Awaitable[Any]]) -> Any:
        """Run `await fn(txn)` atomically and return its result.

        No other event of the object starts meanwhile. An exception in `fn` rolls the
        transaction back and propagates; after `txn.rollback()` the transaction's
        writes are undone and `fn`'s result is still returned.
        """
        host = self._host
        async with host.gate:
            generation = host.generation
            name = self._begin_savepoint()
            try:
                result = await fn(Transaction(self, name))
            except BaseException:
                if generation == host.generation:
                    self._end_savepoint(name, False)
                raise
            if generation != host.generation:
                raise ObjectResetError("the object was reset during the transaction")
            self._end_savepoint(name, True)
            return result

    def transaction_sync(self, fn: Callable[[], Any]) -> Any:
        """Call `fn()` atomically (it uses `kv` and `sql`) and return its result."""
        name = self._begin_savepoint()
        try:
            result = fn()
        except BaseException:
            self._end_savepoint(name, False)
            raise
        self._end_savepoint(name, True)
        return result

    # ---------------------------------------------------------------- alarms

    async def set_alarm(self, when: Any, **_options: Any) -> None:
        await self._host.worker.alarms.set(self._host, when)

    async def get_alarm(self, **_options: Any) -> int | None:
        return self._host.worker.alarms.get(self._host)

    async def delete_alarm(self, **_options: Any) -> None:
        self._host.worker.alarms.delete(self._host)

    # ---------------------------------------------------------------- PITR

    async def get_current_bookmark(self) -> str:
        """The bookmark of the current state (earlier writes are committed first)."""
        return self._host.worker.pitr.current_bookmark(self._host)

    async def get_bookmark_for_time(self, when: Any) -> str:
        """The bookmark of the last commit at or before `when` (datetime or epoch ms)."""
        return self._host.worker.pitr.bookmark_for_time(self._host, when)

    async def on_next_session_restore_bookmark(self, bookmark: str) -> str:
        """Restore to `bookmark` at the object's next start; returns the undo bookmark."""
        return self._host.worker.pitr.restore_on_next_session(self._host, bookmark)
