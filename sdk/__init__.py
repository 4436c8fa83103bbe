"""Stateroom: Durable Objects for Python.

What user code imports: `DurableObject`, `WorkerEntrypoint`, `Request`,
`Response`, `WebSocketPair`, ids, stubs, errors, and the SDK client
(`connect`, `connect_sync`).
"""

from ._client import Client, SyncClient, connect, connect_sync
from ._errors import (
    BindingNotFoundError,
    DeployError,
    DurableObjectError,
    ObjectResetError,
    OverloadedError,
    RemoteError,
    SqlError,
    WorkerCrashedError,
)
from ._http import Headers, MultiDict, Request, Response
from ._ids import DurableObjectId
from ._object import (
    AlarmInfo,
    DurableObject,
    DurableObjectState,
    WebSocket,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WorkerEntrypoint,
)
from ._stub import DurableObjectNamespace, DurableObjectStub

__version__ = "0.1.0"

__all__ = [
    "AlarmInfo",
    "BindingNotFoundError",
    "Client",
    "DeployError",
    "DurableObject",
    "DurableObjectError",
    "DurableObjectId",
    "DurableObjectNamespace",
    "DurableObjectState",
    "DurableObjectStub",
    "Headers",
    "MultiDict",
    "ObjectResetError",
    "OverloadedError",
    "RemoteError",
    "Request",
    "Response",
    "SqlError",
    "SyncClient",
    "WebSocket",
    "WebSocketPair",
    "WebSocketRequestResponsePair",
    "WorkerCrashedError",
    "WorkerEntrypoint",
    "connect",
    "connect_sync",
]
