"""What user code subclasses and touches: `DurableObject`, `WorkerEntrypoint`,
WebSocket handles, and the alarm record.

The runtime behind these lives in the worker process (`stateroom.worker`); this
module only defines the shapes, so user code imports nothing but `stateroom`.

Invariants:
* `DurableObject.__init__(ctx, env)` runs each time an object is brought into
  memory (first use, after eviction, hibernation or a crash).
* Handler names (`fetch`, `alarm`, `web_socket_*`) and names starting with `_` are
  never callable over RPC (`is_rpc_callable`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "AlarmInfo",
    "DurableObject",
    "DurableObjectState",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WorkerEntrypoint",
    "is_rpc_callable",
]

HANDLER_NAMES = frozenset(
    {
        "fetch",
        "alarm",
        "web_socket_message",
        "web_socket_close",
        "web_socket_error",
    }
)


def is_rpc_callable(cls: type, name: str) -> bool:
    """True if `name` is a public `async def` method of `cls` that RPC may call."""
    if not isinstance(name, str) or not name or name.startswith("_") or name in HANDLER_NAMES:
        return False
    if name in _BASE_NAMES:
        return False
    fn = getattr(cls, name, None)
    import inspect

    return inspect.iscoroutinefunction(fn)


class DurableObjectState:
    """The `ctx` of an object. Implemented by the worker; see SPEC §4-§7."""

    id: Any
    storage: Any

    def wait_until(self, awaitable: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def block_concurrency_while(self, fn: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def abort(self, reason: str | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError


class DurableObject:
    """Base class of durable objects. Subclass it and define async handlers."""

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class WorkerEntrypoint:
    """Base class of the stateless front (`Default`) that receives app HTTP requests."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


_BASE_NAMES = frozenset(n for n in dir(DurableObject) if not n.startswith("__"))


@dataclasses.dataclass(frozen=True)
class AlarmInfo:
    """Passed to `alarm()`: `retry_count` (0 first time), `is_retry`, `scheduled_time` (epoch ms)."""

    retry_count: int
    is_retry: bool
    scheduled_time: int


@dataclasses.dataclass(frozen=True)
class WebSocketRequestResponsePair:
    """An automatic response: a message equal to `request` is answered with `response`
    by the supervisor without waking the object."""

    request: str
    response: str


class WebSocket:
    """A WebSocket handle. The connection itself lives in the supervisor.

    The server half of a `WebSocketPair` becomes usable once passed to
    `ctx.accept_web_socket`; the client half is returned in `Response(status=101,
    web_socket=client)`.
    """

    def __init__(self) -> None:
        # Handle id shared by both halves of a pair and by the supervisor's parked socket.
        self._ws_id: int | None = None
        # The worker-side runtime that implements send/close (set on accept/wake).
        self._runtime: Any = None
        self._peer: WebSocket | None = None

    def _require(self) -> Any:
        if self._runtime is None:
            raise RuntimeError("WebSocket is not accepted: call ctx.accept_web_socket(ws) first")
        return self._runtime

    def send(self, message: str | bytes) -> None:
        """Send a message (released after the object's earlier writes are durable)."""
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"WebSocket.send takes str or bytes, not {type(message).__name__}")
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        self._require().ws_send(self, message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._require().ws_close(self, code, reason)

    def serialize_attachment(self, value: Any) -> None:
        """Attach a codec value (<= 16 KiB encoded) that survives hibernation."""
        self._require().ws_set_attachment(self, value)

    def deserialize_attachment(self) -> Any:
        return self._require().ws_get_attachment(self)

    def __repr__(self) -> str:
        return f"<WebSocket {self._ws_id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WebSocket):
            return self._ws_id is not None and self._ws_id == other._ws_id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._ws_id) if self._ws_id is not None else id(self)


class WebSocketPair:
    """`client, server = WebSocketPair()`: two halves of one future connection."""

    def __init__(self) -> None:
        import secrets

        self.client = WebSocket()
        self.server = WebSocket()
        ws_id = secrets.randbits(62) | 1
        self.client._ws_id = self.server._ws_id = ws_id
        self.client._peer, self.server._peer = self.server, self.client

    def __iter__(self):
        return iter((self.client, self.server))

    def __getitem__(self, i: int) -> WebSocket:
        return (self.client, self.server)[i]
