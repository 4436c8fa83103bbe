"""Server-side WebSocket connections: a thin trio adapter over wsproto's sans-I/O core.

The front door (`front.py`, httptools) has already parsed the upgrade request; this module
validates it (`handshake_error`), builds the 101 headers (`accept_headers`) and then
runs the RFC 6455 connection on the raw stream (`ServerWebSocket`). wsproto's
`Connection` parses every incoming frame (masking, fragmentation, UTF-8 validation,
control frames, the close handshake); this adapter only moves bytes and adds what a
parking lot of thousands of mostly idle sockets needs:

* a limit on received message size (`max_message_bytes`; bigger -> close 1009),
  checked on every partial frame, so a huge message is refused before it is buffered;
* coalesced, non-blocking sends: `send_frame` only queues; a `WriteBatcher` shared
  by all connections writes each connection's queued frames with one `os.write` at
  the next scheduling point (a burst that sends many messages to the same sockets
  costs one syscall per socket, not one per frame), straight to the socket when its
  kernel buffer has room (no task, no await), falling back to one drain task only
  while the peer is slow; queued bytes are capped (`max_buffered_bytes`, a client
  that stops reading is cut off instead of growing the supervisor);
* one frame encoding shared by many sockets (`data_frame`): a broadcast encodes its
  message once, not once per receiver (server frames are unmasked and no extension
  is negotiated, so the bytes are the same for every connection);
* one high-level event stream per connection (`receive`): `Message` or, last of all,
  `Closed` (clean close, abrupt drop as 1006, protocol error, or oversize).

Why not trio-websocket (the library the SPEC names as default): its server side
parses the handshake itself from the raw stream (ours was already consumed by the front door),
and every connection owns a nursery, a reader task and a memory channel. Measured on
this machine with the same asyncio `websockets` client against an echo server built
on each (`python bench/ws_adapter.py`): this adapter holds an idle connection in
~12 KB of server RSS versus ~20 KB, echoes 45 k pipelined msg/s versus 13 k, and
completes 2.3 k handshakes/s versus 1.25 k (echo p50 ~120 us versus ~170 us). The
parking lot's targets (<= 25 KB per parked socket with the lot's own bookkeeping on
top, >= 20 k broadcast deliveries/s) leave no room for trio-websocket's overhead.

Invariants:
* Bytes leave in the order they were sent: control frames flush the frames queued
  before them first; at most one drain task per connection, and while it runs every
  write is appended to `_pending` (never written around it).
* After `closed` is set nothing is written to the file descriptor (its number may
  already belong to another socket).
* `receive` returns `Closed` exactly once; afterwards the caller closes the stream.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from stateroom._protocol import HttpRequest

__all__ = [
    "Closed",
    "Message",
    "ServerWebSocket",
    "WriteBatcher",
    "accept_headers",
    "data_frame",
    "handshake_error",
]

RECEIVE_BYTES = 65536

# Response headers of the object's 101 that the handshake itself decides.
_HANDSHAKE_OWNED = frozenset(
    {
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "sec-websocket-accept",
        "sec-websocket-extensions",
    }
)


def _header(request: HttpRequest, name: str) -> str | None:
    for k, v in request.headers:
        if k.lower() == name:
            return v
    return None


def handshake_error(request: HttpRequest) -> str | None:
    """Why `request` is not a valid WebSocket opening handshake, or None if it is."""
    if request.method != "GET":
        return f"a WebSocket upgrade must use GET, not {request.method}"
    connection = (_header(request, "connection") or "").lower()
    if "upgrade" not in [part.strip() for part in connection.split(",")]:
        return "a WebSocket upgrade needs `Connection: Upgrade`"
    version = (_header(request, "sec-websocket-version") or "").strip()
    if version != "13":
        return "unsupported Sec-WebSocket-Version (only 13 is spoken)"
    key = (_header(request, "sec-websocket-key") or "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        return "missing or malformed Sec-WebSocket-Key"
    return None


def accept_headers(
    request: HttpRequest, app_headers: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Headers of the 101 response: the handshake's own plus the app's other headers
    (e.g. `Sec-WebSocket-Protocol` chosen by the object)."""
    key = (_header(request, "sec-websocket-key") or "").strip().encode("ascii")
    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", generate_accept_token(key).decode("ascii")),
    ]
    headers += [(k, v) for k, v in app_headers if k.lower() not in _HANDSHAKE_OWNED]
    return headers


_B0_TEXT = 0x81  # FIN + text opcode
_B0_BINARY = 0x82  # FIN + binary opcode


def data_frame(payload: bytes, text: bool) -> bytes:
    """One unfragmented, unmasked server data frame carrying `payload` (RFC 6455 §5.2)."""
    b0 = _B0_TEXT if text else _B0_BINARY
    n = len(payload)
    if n < 126:
        header = bytes((b0, n))
    elif n < 65536:
        header = struct.pack("!BBH", b0, 126, n)
    else:
        header = struct.pack("!BBQ", b0, 127, n)
    return header + payload


class WriteBatcher:
    """Writes the frames queued on many connections once per scheduling pass."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        # Connections with queued frames, in the order they were first queued.
        self._dirty: list[ServerWebSocket] = []
        self._scheduled = False

    def mark(self, ws: ServerWebSocket) -> None:
        self._dirty.append(ws)
        if not self._scheduled:
            self._scheduled = True
            self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for ws in dirty:
            ws.flush()


# TCP keepalive on parked sockets: a peer that vanished without a FIN (power loss, a
# dropped NAT entry) is noticed after about IDLE + INTERVAL * COUNT seconds and its
# object gets a 1006 close, instead of the socket staying parked forever.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 3


def _keepalive(stream: trio.SocketStream) -> None:
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # not a TCP socket (tests use socketpairs)


@dataclass(frozen=True, slots=True)
class Message:
    """A complete received message: UTF-8 bytes of a text message, or binary bytes."""

    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over. `error` is set for a protocol error or an oversize
    message (the close frame carried `code`); `local` when we started the close."""

    code: int
    reason: str = ""
    was_clean: bool = True
    error: str | None = None
    local: bool = False


class ServerWebSocket:
    """An accepted WebSocket on a trio stream (after the 101 has been sent)."""

    __slots__ = (
        "stream",
        "_proto",
        "_events",
        "_nursery",
        "max_message_bytes",
        "max_buffered_bytes",
        "_parts",
        "_size",
        "_text",
        "_batcher",
        "_queued",
        "_pending",
        "_pending_bytes",
        "_draining",
        "closed",
        "overflowed",
        "_done",
        "_drained",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        nursery: trio.Nursery,
        *,
        batcher: WriteBatcher | None = None,
        trailing: bytes = b"",
        max_message_bytes: int,
        max_buffered_bytes: int,
    ) -> None:
        self.stream = stream
        self._proto = Connection(ConnectionType.SERVER)
        # Protocol events parsed but not yet consumed by `receive`.
        self._events: deque[object] = deque()
        # Where the drain task runs when the peer reads slower than we write.
        self._nursery = nursery
        self.max_message_bytes = max_message_bytes
        self.max_buffered_bytes = max_buffered_bytes
        # Fragments of the message being received, their total size and its type.
        self._parts: list[bytes] = []
        self._size = 0
        self._text = True
        self._batcher = batcher if batcher is not None else WriteBatcher(nursery)
        # Frames queued for the batcher's next pass (None: nothing queued).
        self._queued: list[bytes] | None = None
        # Bytes waiting for the drain task, in send order; empty when not draining.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._draining = False
        # Set once the stream is (being) closed: nothing is written after that.
        self.closed = False
        # Set when the peer stopped reading and `max_buffered_bytes` was exceeded.
        self.overflowed = False
        # Set once `receive` returned `Closed`.
        self._done = False
        # Set (and dropped) when a drain ends, for `wait_flushed`.
        self._drained: trio.Event | None = None
        _keepalive(stream)
        if trailing:
            self._feed(trailing)

    # ------------------------------------------------------------------ receiving

    def _feed(self, data: bytes | None) -> None:
        try:
            self._proto.receive_data(data)
        except LocalProtocolError:
            return  # data after the close: ignored
        self._events.extend(self._proto.events())

    async def receive(self) -> Message | Closed:
        """The next complete message, or the final `Closed`. Pings are answered here."""
        while True:
            while self._events:
                event = self._events.popleft()
                result = self._handle(event)
                if result is not None:
                    if isinstance(result, Closed):
                        self._done = True
                        self._events.clear()
                    return result
            if self._done:
                return Closed(1006, "", was_clean=False)
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            self._feed(data or None)

    def _handle(self, event: object) -> Message | Closed | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            if isinstance(event, TextMessage):
                chunk = event.data.encode("utf-8")
                self._text = True
            else:
                chunk = bytes(event.data)
                self._text = False
            self._size += len(chunk)
            if self._size > self.max_message_bytes:
                reason = f"message exceeds {self.max_message_bytes} bytes"
                self._parts.clear()
                self._send_close(1009, reason)
                return Closed(1009, reason, was_clean=False, error=reason)
            self._parts.append(chunk)
            if not event.message_finished:
                return None
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            self._size = 0
            return Message(data, self._text)
        if isinstance(event, Ping):
            self._send_event(event.response())
            return None
        if isinstance(event, CloseConnection):
            state = self._proto.state
            code = int(event.code)
            if state is ConnectionState.OPEN:
                # wsproto reports a frame it could not parse as a close it received.
                self._send_close(code, event.reason or "")
                return Closed(
                    code,
                    event.reason or "",
                    was_clean=False,
                    error=event.reason or "protocol error",
                )
            if state is ConnectionState.REMOTE_CLOSING:
                self._send_event(event.response())
                return Closed(code, event.reason or "", was_clean=True)
            # CLOSED: either the answer to our close, or the transport ended (1006).
            if code == 1006:
                return Closed(1006, "", was_clean=False)
            return Closed(code, event.reason or "", was_clean=True, local=True)
        return None  # Pong: nothing to do

    # ------------------------------------------------------------------ sending

    @property
    def is_open(self) -> bool:
        return not self.closed and self._proto.state is ConnectionState.OPEN

    def send_frame(self, frame: bytes) -> None:
        """Queue one pre-encoded data frame (see `data_frame`); dropped once closing."""
        if self._proto.state is not ConnectionState.OPEN or self.closed:
            return
        if self._queued is None:
            self._queued = [frame]
            self._batcher.mark(self)
        else:
            self._queued.append(frame)

    def flush(self) -> None:
        """Write the queued frames now (the batcher calls this once per pass)."""
        queued, self._queued = self._queued, None
        if queued:
            self._write(queued[0] if len(queued) == 1 else b"".join(queued))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (the peer's answer ends `receive`)."""
        self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        if self._proto.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._send_event(CloseConnection(code=code, reason=reason))

    def _send_event(self, event: object) -> None:
        try:
            data = self._proto.send(event)  # type: ignore[arg-type]
        except (LocalProtocolError, RemoteProtocolError):
            return
        self.flush()  # frames queued before this control frame go first
        self._write(bytes(data))

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._draining:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes > self.max_buffered_bytes:
                self._overflow()
            return
        try:
            sent = os.write(self.stream.socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # broken: the reader sees the end of the stream
        if sent < len(data):
            self._pending.append(data[sent:])
            self._pending_bytes = len(data) - sent
            self._draining = True
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._pending and not self.closed:
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                await self.stream.send_all(b"".join(batch) if len(batch) > 1 else batch[0])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._pending = []
            self._pending_bytes = 0
            self._draining = False
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    def _overflow(self) -> None:
        """The peer stopped reading: cut it off (the reader then sees the end)."""
        self.overflowed = True
        self._pending = []
        self._pending_bytes = 0
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now (no close frame): `receive` then ends with 1006."""
        if self.closed:
            return
        try:
            self.stream.socket.shutdown(2)  # SHUT_RDWR wakes the reader with EOF
        except OSError:
            pass

    async def wait_flushed(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every queued byte has been handed to the kernel."""
        self.flush()
        if not self._draining:
            return
        if self._drained is None:
            self._drained = trio.Event()
        with trio.move_on_after(timeout):
            await self._drained.wait()

    async def aclose(self) -> None:
        """Close the stream; nothing is written afterwards."""
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
