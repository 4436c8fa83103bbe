"""`ctx` for objects (`DurableObjectState`) and entrypoints, and `ctx.storage`.

Every storage coroutine here completes without yielding to trio: the work is a
synchronous APSW call. That is what keeps the input gate closed during storage
operations (see `catalog.py`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from stateroom._errors import ObjectResetError
from stateroom._ids import DurableObjectId
from stateroom._object import DurableObjectState

from .catalog import ObjectHost


class _Rollback(Exception):
    """Raised by `txn.rollback()` to end a transaction rolled back."""


class SyncKv:
    """`ctx.storage.kv`: the synchronous KV API."""

    def __init__(self, host: ObjectHost) -> None:
        self._host = host

    def get(self, key: Any) -> Any:
        if isinstance(key, list):
            return self._host.db.kv_get_many(key)
        return self._host.db.kv_get(key)

    def put(self, key: Any, value: Any = None) -> None:
        entries = key if isinstance(key, dict) else {key: value}
        self._host.note_write()
        self._host.db.kv_put_many(entries)

    def delete(self, key: Any) -> Any:
        self._host.note_write()
        if isinstance(key, list):
            return self._host.db.kv_delete_many(key)
        return self._host.db.kv_delete_many([key]) == 1

    def list(self, **options: Any) -> dict[str, Any]:
        return self._host.db.kv_list(**options)


class Transaction:
    """The `txn` passed to `storage.transaction(fn)`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def get(self, key: Any) -> Any:
        return await self._storage.get(key)

    async def put(self, key: Any, value: Any = None) -> None:
        await self._storage.put(key, value)

    async def delete(self, key: Any) -> Any:
        return await self._storage.delete(key)

    async def list(self, **options: Any) -> dict[str, Any]:
        return await self._storage.list(**options)

    def rollback(self) -> None:
        raise _Rollback()


class Storage:
    """`ctx.storage`: async KV, sync KV (`kv`), SQL (`sql`), alarms, bookmarks."""

    def __init__(self, host: ObjectHost) -> None:
        self._host = host
        self.kv = SyncKv(host)
        from .sql import SqlStorage

        self.sql = SqlStorage(host)

    async def get(self, key: Any) -> Any:
        return self.kv.get(key)

    async def put(self, key: Any, value: Any = None) -> None:
        self.kv.put(key, value)

    async def delete(self, key: Any) -> Any:
        return self.kv.delete(key)

    async def list(self, **options: Any) -> dict[str, Any]:
        return self.kv.list(**options)

    async def delete_all(self) -> None:
        self._host.note_write()
        self._host.db.delete_all()
        self._host.worker.alarms.delete(self._host)

    async def sync(self) -> None:
        """Return once every earlier write is durable."""
        self._host.commit()

    def _begin_savepoint(self) -> None:
        self._host.note_write()
        conn = self._host.db.write_conn()
        conn.execute("SAVEPOINT stateroom_txn")
        self._host.txn_depth += 1

    def _end_savepoint(self, ok: bool) -> None:
        host = self._host
        host.txn_depth -= 1
        conn = host.db.conn
        if conn is None:
            return
        if not ok:
            conn.execute("ROLLBACK TO stateroom_txn")
        conn.execute("RELEASE stateroom_txn")

    async def transaction(self, fn: Callable[[Transaction], Awaitable[Any]]) -> Any:
        """Run `await fn(txn)` atomically; no other event of the object runs meanwhile."""
        host = self._host
        async with host.gate:
            generation = host.generation
            self._begin_savepoint()
            try:
                result = await fn(Transaction(self))
            except _Rollback:
                if generation == host.generation:
                    self._end_savepoint(False)
                return None
            except BaseException:
                if generation == host.generation:
                    self._end_savepoint(False)
                raise
            if generation != host.generation:
                raise ObjectResetError("the object was reset during the transaction")
            self._end_savepoint(True)
            return result

    def transaction_sync(self, fn: Callable[[], Any]) -> Any:
        self._begin_savepoint()
        try:
            result = fn()
        except _Rollback:
            self._end_savepoint(False)
            return None
        except BaseException:
            self._end_savepoint(False)
            raise
        self._end_savepoint(True)
        return result

    # ---------------------------------------------------------------- alarms

    async def set_alarm(self, when: Any) -> None:
        await self._host.worker.alarms.set(self._host, when)

    async def get_alarm(self) -> int | None:
        return self._host.worker.alarms.get(self._host)

    async def delete_alarm(self) -> None:
        self._host.worker.alarms.delete(self._host)

    # ---------------------------------------------------------------- PITR

    async def get_current_bookmark(self) -> str:
        return self._host.worker.pitr.current_bookmark(self._host)

    async def get_bookmark_for_time(self, when: Any) -> str:
        return self._host.worker.pitr.bookmark_for_time(self._host, when)

    async def on_next_session_restore_bookmark(self, bookmark: str) -> str:
        return self._host.worker.pitr.restore_on_next_session(self._host, bookmark)


def to_epoch_ms(when: Any) -> int:
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.astimezone()
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"expected a datetime or epoch milliseconds, not {type(when).__name__}")
    return int(when)


class ObjectState(DurableObjectState):
    """`ctx` of a DurableObject instance."""

    def __init__(self, host: ObjectHost, object_id: DurableObjectId) -> None:
        self._host = host
        self.id = object_id
        self.storage = Storage(host)

    def wait_until(self, awaitable: Any) -> None:
        host = self._host
        host.waiting += 1

        async def run() -> None:
            try:
                await awaitable
            except Exception as exc:  # noqa: BLE001 - background work: log, never crash
                host.worker.log(f"wait_until task failed: {exc!r}")
            finally:
                host.waiting -= 1
                host.settled.unpark_all()
                host.last_used = trio.current_time()

        host.worker.nursery.start_soon(run)

    async def block_concurrency_while(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await self._host.block_concurrency_while(fn)

    def abort(self, reason: str | None = None) -> Any:
        message = f"object aborted: {reason}" if reason else "object aborted"
        self._host.reset(message)
        raise ObjectResetError(message, retryable=False)

    # WebSocket methods are provided by the worker's socket registry (§7).
    def accept_web_socket(self, ws: Any, tags: Any = None) -> None:
        self._host.worker.sockets.accept(self._host, ws, tags)

    def get_web_sockets(self, tag: str | None = None) -> list[Any]:
        return self._host.worker.sockets.get_web_sockets(self._host, tag)

    def get_tags(self, ws: Any) -> list[str]:
        return self._host.worker.sockets.get_tags(self._host, ws)

    def set_web_socket_auto_response(self, pair: Any = None) -> None:
        self._host.worker.sockets.set_auto_response(self._host, pair)

    def get_web_socket_auto_response(self) -> Any:
        return self._host.worker.sockets.get_auto_response(self._host)

    def get_web_socket_auto_response_timestamp(self, ws: Any) -> Any:
        return self._host.worker.sockets.get_auto_response_timestamp(self._host, ws)

    def set_hibernatable_web_socket_event_timeout(self, ms: int | None = None) -> None:
        self._host.worker.sockets.set_event_timeout(self._host, ms)

    def get_hibernatable_web_socket_event_timeout(self) -> int | None:
        return self._host.worker.sockets.get_event_timeout(self._host)


class EntrypointContext:
    """`ctx` of a WorkerEntrypoint (stateless)."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def wait_until(self, awaitable: Any) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception as exc:  # noqa: BLE001
                self._worker.log(f"wait_until task failed: {exc!r}")

        self._worker.nursery.start_soon(run)


class Env:
    """`env`: one attribute per binding (a namespace) and per var."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"<Env {sorted(self.__dict__)}>"
