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

A WebSocket upgrade is handed, with the raw stream, to the `on_upgrade` hook.
"""

from __future__ import annotations

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
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            return event

    async def _wait_for_bytes(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        """Return once h11 holds unread bytes (or the peer closed)."""
        if conn.trailing_data[0] or conn.trailing_data[1]:
            return
        conn.receive_data(await stream.receive_some(65536))

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, *events: Any) -> None:
        data = b"".join(conn.send(e) or b"" for e in events)
        if data:
            await stream.send_all(data)

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
            await stream.send_all(
                f"HTTP/1.1 {status} Error\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        first = True
        while True:
            try:
                if not first:
                    # Keep-alive: the next request may be `idle_timeout` in coming;
                    # from its first byte on, its headers get `header_timeout`.
                    with trio.fail_after(self.idle_timeout):
                        await self._wait_for_bytes(conn, stream)
                with trio.fail_after(self.header_timeout):
                    event = await self._next_event(conn, stream)
                    if isinstance(event, h11.Request):
                        pass
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                    else:
                        return
            except trio.TooSlowError:
                if conn.their_state is h11.SEND_BODY or (
                    conn.their_state is h11.IDLE and conn.trailing_data[0]
                ):
                    await self._simple(conn, stream, 408, b"request timeout\n")
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                if status == 431 or "exceeds" in str(exc).lower():
                    status = 431
                await self._simple(conn, stream, status, f"bad request: {exc}\n".encode())
                return
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
                await self._simple(
                    conn, stream, 431, f"request headers exceed {MAX_HEADER_BYTES} bytes\n".encode()
                )
                return
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
                await self._simple(
                    conn, stream, 400, b"bad request: target must be an absolute path\n"
                )
                return
            if length is not None and length > self.max_body_bytes:
                await self._simple(
                    conn,
                    stream,
                    413,
                    f"request body exceeds {self.max_body_bytes} bytes\n".encode(),
                )
                return
            try:
                with trio.fail_after(self.body_timeout):
                    body = await self._read_body(conn, stream)
            except BodyTooLarge:
                await self._simple(
                    conn,
                    stream,
                    413,
                    f"request body exceeds {self.max_body_bytes} bytes\n".encode(),
                )
                return
            except trio.TooSlowError:
                await self._simple(conn, stream, 408, b"request body timeout\n")
                return
            except h11.RemoteProtocolError as exc:
                await self._simple(conn, stream, 400, f"bad request: {exc}\n".encode())
                return
            url = f"http://{host}{target}"
            http_request = HttpRequest(method, url, headers, body)
            if upgrade and self.on_upgrade is not None:
                # The hook owns the connection from here (handshake, frames, close).
                await self.on_upgrade(http_request, stream, conn)
                return
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
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_body(self, conn: h11.Connection, stream: trio.SocketStream) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.Data):
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
        headers = [
            (k, v)
            for k, v in response.headers
            if k.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        headers.append(("content-length", str(len(response.body))))
        try:
            out = conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
            if method != "HEAD" and response.body:
                out += conn.send(h11.Data(data=response.body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            await self._simple(conn, stream, 500, f"bad response from app: {exc}\n".encode())
            return
        await stream.send_all(out)
