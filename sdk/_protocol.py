# mypy: disable-error-code="misc"
# (msgspec Structs inherit `frozen` from `_Msg`; mypy's dataclass view does not see it.)
"""The wire protocol between the supervisor and its workers: data only, no I/O.

Frames are length-prefixed (4-byte big-endian length, then one msgpack-encoded
message). Every message is a tagged `msgspec.Struct`; the tag is its class name.
Writers coalesce: a connection drains every queued frame into one `send_all`, so a
burst of small messages costs one syscall (measured here: ~9 k msg/s unbatched
versus 50-85 k msg/s coalesced over a trio Unix socket).

Handshake: the worker sends `Hello(version, pid, index)`; the supervisor answers
`Welcome(version, ...)` or closes the connection when versions differ.

Requests carry a `request_id` unique per direction: the supervisor numbers what it
sends (`Fetch`, `Rpc`, `LoadDeployment`, ...) and the worker answers with `Reply`;
the worker numbers its own outgoing calls (`Call`) and the supervisor answers with
`CallReply`. Errors travel as plain fields (see `_errors.error_to_fields`), never
pickled. User values inside RPC travel as bytes of the value codec (`_codec`).

This module never imports trio and does no I/O, so it is unit-testable alone.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 30  # 1 GiB: a frame bigger than this is a protocol error.

_LEN = struct.Struct(">I")


class _Msg(msgspec.Struct, tag=True, frozen=True, array_like=True, omit_defaults=True):
    pass


# ----------------------------------------------------------------- plain records


class Target(msgspec.Struct, frozen=True, array_like=True):
    """An object address: its class (namespace) and id; `name` when known."""

    class_name: str
    id: str
    name: str | None = None


class HttpRequest(msgspec.Struct, frozen=True, array_like=True):
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes


class HttpResponse(msgspec.Struct, frozen=True, array_like=True):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # Set when the response accepts a WebSocket: the handle id chosen by the worker.
    web_socket: int | None = None


# ----------------------------------------------------------------- handshake


class Hello(_Msg):
    """Worker -> supervisor, first frame."""

    version: int
    pid: int
    index: int


class Welcome(_Msg):
    """Supervisor -> worker, answer to Hello: the worker's shards and settings."""

    version: int
    shard_count: int
    shards: list[int]
    worker_count: int
    settings: dict[str, Any]
    # The slot this process serves (a spare started as -1 learns it here).
    index: int = -1


class AssignShards(_Msg):
    """Supervisor -> worker: the complete, current shard map (index per shard)."""

    owners: list[int]


# ----------------------------------------------------------------- supervisor -> worker


class LoadDeployment(_Msg):
    """Unpickle and (unless `validate_only`) activate a deployment bundle."""

    request_id: int
    version: int
    bundle: bytes
    # {"bindings": {binding: class}, "vars": {...}, "namespaces": {class: [key, secret_hex]},
    #  "classes": [...], "has_default": bool}
    manifest: dict[str, Any]
    validate_only: bool = False


class Fetch(_Msg):
    """Deliver an HTTP request to an object (`target`) or to `Default` (no target)."""

    request_id: int
    request: HttpRequest
    target: Target | None = None


class Rpc(_Msg):
    request_id: int
    target: Target
    method: str
    args: bytes  # codec-encoded (args tuple, kwargs dict)


class Admin(_Msg):
    """An object-level admin operation executed by the owning worker.

    op: "info", "delete", "export", "import", "inject", "run_in_object" (see
    `stateroom.worker.admin`), and "live": sent to every worker with an empty
    `target.id`, answered with the ids of the class's objects that worker holds in
    memory.
    """

    request_id: int
    op: str
    target: Target
    data: bytes = b""
    params: dict[str, Any] = {}


class Cancel(_Msg):
    request_id: int


class Abandon(_Msg):
    """Supervisor -> worker: whoever made request `request_id` is gone (its worker
    crashed). Stop the request's events that have not written anything yet, so the
    dead caller's outcome can be settled (retryable or not) promptly. Events that
    wrote run on; their commit is announced as usual."""

    request_id: int


class CallReply(_Msg):
    """Supervisor -> worker: the result of a worker-originated `Call`."""

    request_id: int
    ok: bool
    response: HttpResponse | None = None
    value: bytes = b""
    error: dict[str, Any] | None = None


class Shutdown(_Msg):
    """Finish in-flight events within `grace` seconds, then exit."""

    grace: float


# ----------------------------------------------------------------- worker -> supervisor


class Reply(_Msg):
    """Worker -> supervisor: the result of a supervisor request.

    `committed` is true when the event made a durable write (so a failure after it
    is not retryable).
    """

    request_id: int
    ok: bool
    response: HttpResponse | None = None
    value: bytes = b""
    error: dict[str, Any] | None = None


class Call(_Msg):
    """Worker -> supervisor: a stub call to an object owned by another worker."""

    request_id: int
    target: Target
    kind: str  # "fetch" | "rpc"
    request: HttpRequest | None = None
    method: str = ""
    args: bytes = b""
    # The supervisor request this call is made for (0: none, e.g. an alarm): a durable
    # write by the callee counts as a durable effect of that request too.
    origin: int = 0


class Committed(_Msg):
    """Worker -> supervisor: the event `request_id` is about to make a durable write.

    Recorded in the commit log shared with the supervisor (`stateroom._commitlog`)
    *before* the COMMIT starts, and sent as this frame without waiting; so if the
    worker dies at any later moment the supervisor knows the write may have happened
    (from the frame, or from the log it reads after the death) and reports the
    failure as not retryable.
    """

    request_id: int


class Stats(_Msg):
    """Worker -> supervisor, periodic: gauges and metered deltas."""

    objects_active: int
    meters: list[list[Any]] = []


# ----------------------------------------------------------------- alarms


class AlarmSet(_Msg):
    """Worker -> supervisor: the object's committed alarm (epoch ms), or None: none.

    Sent through the object's output gate, so only once the write is durable; the
    supervisor's alarm index is a hint the worker re-checks at firing time.
    `resync`: sent when the object starts with an alarm stored; it only adds an
    index entry that is missing (a commit whose report was lost in a crash).
    """

    ns_key: int
    target: Target
    time: int | None = None
    resync: bool = False


class RunAlarm(_Msg):
    """Supervisor -> worker: run the object's alarm handler if its alarm is due.

    `scheduled` is the alarm time the index holds and `retry_count` the attempt
    number for it; `force` runs a stored alarm now (testing kit); `expire` drops
    the stored alarm without running it (retries exhausted). `not_before` (epoch
    ms): the run starts no earlier; the supervisor sends `RunAlarm` a little ahead
    of that time and the worker holds it until then. Answered by `Reply` whose value
    is a codec-encoded dict (see `stateroom.worker.alarms`).
    """

    request_id: int
    target: Target
    scheduled: int
    retry_count: int = 0
    force: bool = False
    expire: bool = False
    not_before: int = 0


# ----------------------------------------------------------------- meters


class FlushMeters(_Msg):
    """Supervisor -> worker: send a `Stats` with every meter counted so far, then
    `Reply` (the Stats frame precedes the Reply on the connection)."""

    request_id: int


# ----------------------------------------------------------------- WebSockets (SPEC §7)
#
# The connection lives in the supervisor (`supervisor/parking.py`); the owning worker
# holds handles (`worker/sockets.py`). A socket is named by `ws_id`, chosen by the
# worker's `WebSocketPair` and carried back to the front door in
# `HttpResponse.web_socket`. Messages travel as bytes with a `text` flag (msgspec
# unions allow one str-like type only).


class WsSocket(msgspec.Struct, frozen=True, array_like=True):
    """What the supervisor keeps of one socket for its object: enough to rebuild a
    handle in a fresh instance. `attachment` is value-codec bytes; `auto_response_ms`
    the epoch ms of the last auto-response sent on it."""

    ws_id: int
    tags: list[str] = []
    attachment: bytes | None = None
    auto_response_ms: int | None = None


class WsAccepted(_Msg):
    """Worker -> supervisor: the object accepted socket `ws_id` with `tags`. Pending
    until the 101 response carrying `ws_id` reaches the front door."""

    ws_id: int
    target: Target
    tags: list[str] = []


class WsSend(_Msg):
    """Worker -> supervisor: send one message to every socket of `ws_ids`, in order
    with the worker's other socket output (already released by the output gate)."""

    ws_ids: list[int]
    data: bytes
    text: bool = True


class WsClose(_Msg):
    """Worker -> supervisor: the object closes socket `ws_id` (after earlier sends)."""

    ws_id: int
    code: int = 1000
    reason: str = ""


class WsSetAttachment(_Msg):
    """Worker -> supervisor: the socket's attachment (codec bytes; None clears)."""

    ws_id: int
    attachment: bytes | None = None


class WsSetOptions(_Msg):
    """Worker -> supervisor: the object's socket settings, kept across hibernation:
    the auto-response pair (both None: none) and the event timeout (None: none)."""

    target: Target
    auto_request: str | None = None
    auto_response: str | None = None
    event_timeout_ms: int | None = None


class WsRestore(_Msg):
    """Worker -> supervisor: the parked sockets of `target`, asked before its
    constructor runs. Answered by `WsRestored` with the same `request_id`."""

    request_id: int
    target: Target


class WsRestored(_Msg):
    """Supervisor -> worker: answer to `WsRestore`, sockets in accept order."""

    request_id: int
    sockets: list[WsSocket] = []
    auto_request: str | None = None
    auto_response: str | None = None
    event_timeout_ms: int | None = None


class WsSync(_Msg):
    """Worker -> supervisor, once at start: which objects of my shards have parked
    sockets? Answered by `WsSynced`."""

    request_id: int


class WsSynced(_Msg):
    """Supervisor -> worker: `objects` = [[class name, id, socket count], ...]."""

    request_id: int
    objects: list[tuple[str, str, int]] = []


class WsEvent(_Msg):
    """Supervisor -> worker: deliver a socket event to the object (re-creating it if
    needed); answered by `Reply` once the handler finished.

    kind: "message" (`data`, `text`), "close" (`code`, `reason`, `was_clean`) or
    "error" (`reason` is the error message). For close and error the socket has
    already left the parked set, so `socket` carries its tags and attachment.
    """

    request_id: int
    target: Target
    ws_id: int
    kind: str
    data: bytes = b""
    text: bool = True
    code: int = 0
    reason: str = ""
    was_clean: bool = True
    socket: WsSocket | None = None


class WsAutoResponded(_Msg):
    """Supervisor -> worker: the supervisor answered socket `ws_id` from the
    object's auto-response pair at `time_ms` (epoch ms), without waking it."""

    target: Target
    ws_id: int
    time_ms: int


# ----------------------------------------------------------------- fault injection (SPEC §13)

# Crash points, in the order an event reaches them (SPEC §13).
FAULT_POINTS = (
    "before_commit",
    "after_commit",
    "before_reply",
    "during_alarm",
    "during_socket_delivery",
)


class FaultFired(_Msg):
    """Worker -> supervisor, the worker's last words: it is exiting at crash point
    `point` for `target` (an armed fault). The supervisor counts it against the
    fault's remaining `times` and re-arms the rest in the replacement worker."""

    point: str
    target: Target


Message = (
    Hello
    | Welcome
    | AssignShards
    | LoadDeployment
    | Fetch
    | Rpc
    | Admin
    | Cancel
    | CallReply
    | Shutdown
    | Reply
    | Call
    | Committed
    | Stats
    | AlarmSet
    | RunAlarm
    | FlushMeters
    | WsAccepted
    | WsSend
    | WsClose
    | WsSetAttachment
    | WsSetOptions
    | WsRestore
    | WsRestored
    | WsSync
    | WsSynced
    | WsEvent
    | WsAutoResponded
    | FaultFired
    | Abandon
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ProtocolError(Exception):
    """A frame that cannot be decoded or is too large."""


def encode_frame(msg: _Msg) -> bytes:
    payload = _encoder.encode(msg)
    return _LEN.pack(len(payload)) + payload


def decode_message(payload: bytes | memoryview) -> Any:
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad frame: {exc}") from None


class FrameReader:
    """Incremental frame splitter: feed bytes, iterate complete messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit")
            if n - pos - 4 < length:
                break
            out.append(decode_message(bytes(buf[pos + 4 : pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


def shard_of(object_id: str, shard_count: int) -> int:
    """The shard of an object id (64 hex chars): stable across restarts."""
    return int(object_id[:8], 16) % shard_count
