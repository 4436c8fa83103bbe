"""`ctx` for objects (`DurableObjectState`) and entrypoints.

`ctx.storage` is `storage_api.Storage` (KV, SQL, alarms, PITR; see that module for
how storage calls keep the input gate closed).
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
from .storage_api import Storage, SyncKv, Transaction

__all__ = ["EntrypointContext", "Env", "ObjectState", "Storage", "SyncKv", "Transaction"]


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
