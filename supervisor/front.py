"""The front door: HTTP/1.1 on trio over h11 (one task per connection, keep-alive).

h11 does the parsing (sans-I/O); this module only moves bytes and enforces limits:
* malformed requests -> 400 and the connection closes; the supervisor keeps serving;
* bodies over `max_body_bytes` -> 413 (checked against Content-Length up front and
  while reading chunked bodies);
* slow clients: a request's headers must arrive within `header_timeout` of its
  first byte (of the connection, for the first request), else 408 and close; an
  idle keep-alive connection closes after `idle_timeout` (tests shorten both with
  `STATEROOM_HEADER_TIMEOUT` / `STATEROOM_IDLE_TIMEOUT`);
* one connection's failure, whatever it is, ends that connection only: it is
  logged and the server keeps serving everyone else;
* header block size is capped by h11's `max_incomplete_event_size`.

Cost per request: the connection has one cancel scope whose deadline is moved to
the phase's (idle, head, body; none while the app handles the request), and only
when the phase has to wait: a request that arrived whole in one read is parsed
without touching it. Reads and writes go straight to the socket; trio is asked to
wait only when the kernel has nothing to give or no room (a read that needed no
wait still yields once, so a client that keeps the socket full starves no one).
h11 builds the response head from the framing header alone (its state machine
acts on nothing else); the app's headers, validated by h11 once per distinct
(name, value), go in after the status line.

A WebSocket upgrade is handed, with the raw stream, to the `on_upgrade` hook.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from stateroom._protocol import HttpRequest, HttpResponse

MAX_HEADER_BYTES = 64 * 1024

Handler = Callable[[HttpRequest, Any], Awaitable[HttpResponse]]


class BodyTooLarge(Exception):
    pass


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        header_timeout: float | None = None,
        idle_timeout: float | None = None,
        body_timeout: float = 60.0,
        on_upgrade: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.header_timeout = (
            header_timeout
            if header_timeout is not None
            else float(os.environ.get("STATEROOM_HEADER_TIMEOUT") or 10.0)
        )
        self.idle_timeout = (
            idle_timeout
            if idle_timeout is not None
            else float(os.environ.get("STATEROOM_IDLE_TIMEOUT") or 75.0)
        )
        self.body_timeout = body_timeout
        self.on_upgrade = on_upgrade
        self.host_header = "127.0.0.1"
        self.connections = 0

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - one connection never takes the server down
            print(
                f"stateroom: connection failed: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            self.connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await stream.aclose()
                except Exception:  # noqa: BLE001
                    pass

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await _receive(stream))
                continue
            return event

    async def _wait_for_bytes(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        """Return once h11 holds unread bytes (or the peer closed)."""
        if conn.trailing_data[0] or conn.trailing_data[1]:
            return
        conn.receive_data(await _receive(stream))

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, *events: Any) -> None:
        data = b"".join(conn.send(e) or b"" for e in events)
        if data:
            await send_all(stream, data)

    async def _simple(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes
    ) -> None:
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            await self._send(
                conn,
                stream,
                h11.Response(status_code=status, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except h11.LocalProtocolError:
            await send_all(
                stream,
                f"HTTP/1.1 {status} Error\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body,
            )

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        # One scope for the connection's whole life; its deadline is the current
        # phase's (see `_Phase`) and infinite while the app handles a request.
        phase = _Phase()
        with trio.CancelScope() as deadline:
            refusal = await self._serve_requests(conn, stream, deadline, phase)
        if deadline.cancelled_caught:
            if phase.name == "body":
                await self._simple(conn, stream, 408, b"request body timeout\n")
            elif conn.their_state is h11.SEND_BODY or (
                conn.their_state is h11.IDLE and conn.trailing_data[0]
            ):
                await self._simple(conn, stream, 408, b"request timeout\n")
        elif refusal is not None:
            await self._simple(conn, stream, *refusal)

    async def _serve_requests(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        deadline: trio.CancelScope,
        phase: _Phase,
    ) -> tuple[int, bytes] | None:
        """Serve requests until the connection ends; returns a refusal to send, if any.

        Runs inside the connection's `deadline` scope: a phase that may wait for the
        client moves its deadline first. What is already buffered is parsed without
        touching the deadline (a request usually arrives whole in one read).
        """
        first = True
        started = trio.current_time()
        while True:
            try:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if first:
                        # The first request's headers: `header_timeout` from the
                        # connection's start.
                        phase.name = "head"
                        deadline.deadline = started + self.header_timeout
                    elif not (conn.trailing_data[0] or conn.trailing_data[1]):
                        # Keep-alive: the next request may be `idle_timeout` in
                        # coming; from its first byte on, its headers get
                        # `header_timeout`.
                        phase.name = "idle"
                        deadline.deadline = trio.current_time() + self.idle_timeout
                        await self._wait_for_bytes(conn, stream)
                        event = conn.next_event()
                    if event is h11.NEED_DATA:
                        if phase.name != "head":
                            phase.name = "head"
                            deadline.deadline = trio.current_time() + self.header_timeout
                        event = await self._next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return None  # ConnectionClosed (or nothing a server can act on)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                if status == 431 or "exceeds" in str(exc).lower():
                    status = 431
                return status, f"bad request: {exc}\n".encode()
            first = False
            request: h11.Request = event
            head_size = (
                len(request.method)
                + len(request.target)
                + sum(len(k) + len(v) + 4 for k, v in request.headers)
            )
            if head_size > MAX_HEADER_BYTES:
                # h11 caps only a head still incomplete; one that arrived whole is
                # measured here.
                return 431, f"request headers exceed {MAX_HEADER_BYTES} bytes\n".encode()
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
            host = "127.0.0.1"
            length: int | None = None
            upgrade = False
            for k, v in headers:
                if k == "host":
                    host = v
                elif k == "content-length":
                    try:
                        length = int(v)
                    except ValueError:
                        length = None
                elif k == "upgrade" and v.lower() == "websocket":
                    upgrade = True
            if not target.startswith("/"):
                return 400, b"bad request: target must be an absolute path\n"
            too_large = f"request body exceeds {self.max_body_bytes} bytes\n".encode()
            if length is not None and length > self.max_body_bytes:
                return 413, too_large
            try:
                body = await self._read_body(conn, stream, deadline, phase)
            except BodyTooLarge:
                return 413, too_large
            except h11.RemoteProtocolError as exc:
                return 400, f"bad request: {exc}\n".encode()
            phase.name = "app"
            if deadline.deadline != math.inf:
                deadline.deadline = math.inf
            url = f"http://{host}{target}"
            http_request = HttpRequest(method, url, headers, body)
            if upgrade and self.on_upgrade is not None:
                # The hook owns the connection from here (handshake, frames, close).
                await self.on_upgrade(http_request, stream, conn)
                return None
            try:
                response = await self.handler(http_request, None)
            except Exception as exc:  # noqa: BLE001 - never let one request kill the server
                response = HttpResponse(
                    500, [("content-type", "text/plain")], f"internal error: {exc!r}\n".encode()
                )
            if response.status == 101:
                response = HttpResponse(
                    400,
                    [("content-type", "text/plain")],
                    b"a 101 response needs a WebSocket upgrade request\n",
                )
            await self._write_response(conn, stream, method, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return None
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return None

    async def _read_body(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        deadline: trio.CancelScope,
        phase: _Phase,
    ) -> bytes:
        """The request's body; what is buffered is parsed before any deadline is set."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if phase.name != "body":
                    phase.name = "body"
                    deadline.deadline = trio.current_time() + self.body_timeout
                conn.receive_data(await _receive(stream))
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body_bytes:
                    raise BodyTooLarge()
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("client closed mid-body")

    async def _write_response(
        self, conn: h11.Connection, stream: trio.SocketStream, method: str, response: HttpResponse
    ) -> None:
        """Send `response` (its body unless `method` is HEAD) and advance h11's state.

        h11 sees only the framing header (`content-length`), which is all its state
        machine acts on; the app's other headers are validated and encoded by h11
        once per distinct (name, value) (`_header_line`) and go right after the
        status line, where h11 would have put them.
        """
        body = response.body
        try:
            lines = [
                _header_line(k, v)
                for k, v in response.headers
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            head = conn.send(
                h11.Response(
                    status_code=response.status, headers=[("content-length", str(len(body)))]
                )
            )
            assert head is not None
            if lines:
                cut = head.index(b"\r\n") + 2
                head = head[:cut] + b"".join(lines) + head[cut:]
            if method != "HEAD" and body:
                head += conn.send(h11.Data(data=body)) or b""
            head += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            await self._simple(conn, stream, 500, f"bad response from app: {exc}\n".encode())
            return
        await send_all(stream, head)


class _Phase:
    """What a connection is waiting for: "head", "idle", "body" or "app"."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "head"


# Encoded header lines of responses by (name, value), validated by h11; emptied when full.
_HEADER_LINES: dict[tuple[str, str], bytes] = {}
_HEADER_LINES_MAX = 4096


def _header_line(name: str, value: str) -> bytes:
    """`name: value\\r\\n` as h11 writes it; raises `h11.LocalProtocolError` if invalid."""
    line = _HEADER_LINES.get((name, value))
    if line is None:
        # h11 validates a header when it builds the event, and writes the raw name.
        h11.Response(status_code=200, headers=[(name, value)])
        line = name.encode("ascii") + b": " + value.encode("ascii") + b"\r\n"
        if len(_HEADER_LINES) >= _HEADER_LINES_MAX:
            _HEADER_LINES.clear()
        _HEADER_LINES[(name, value)] = line
    return line


async def _receive(stream: trio.SocketStream) -> bytes:
    """Up to 64 KiB from the socket (b"" at EOF), waiting only when none is there.

    A read that needed no wait yields once anyway, so a client that keeps the
    socket full cannot starve the other connections.
    """
    fd = stream.socket.fileno()
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        pass
    else:
        await trio.lowlevel.checkpoint()
        return data
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            continue


async def send_all(stream: trio.SocketStream, data: bytes) -> None:
    """Write all of `data`, waiting for room only when the kernel takes less.

    Unlike `trio.SocketStream.send_all`, it does not yield when the kernel takes
    everything at once.
    """
    fd = stream.socket.fileno()
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    with memoryview(data) as view:
        while sent < len(data):
            await trio.lowlevel.wait_writable(fd)
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                continue
