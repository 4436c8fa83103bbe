"""The front door: HTTP/1.1 on trio over httptools (one task per connection, keep-alive).

httptools (llhttp, the parser of Node.js and uvicorn) does the parsing, sans-I/O,
through callbacks into `_RequestParser`; this module only moves bytes and enforces
limits:
* malformed requests -> 400 and the connection closes; the supervisor keeps serving
  (an unknown HTTP version gets 505, a transfer coding other than `chunked` 501);
* bodies over `max_body_bytes` -> 413 (checked against Content-Length up front and
  while reading chunked bodies);
* slow clients: a request's headers must arrive within `header_timeout` of its
  first byte (of the connection, for the first request), else 408 and close; an
  idle keep-alive connection closes after `idle_timeout` (tests shorten both with
  `STATEROOM_HEADER_TIMEOUT` / `STATEROOM_IDLE_TIMEOUT`);
* one connection's failure, whatever it is, ends that connection only: it is
  logged and the server keeps serving everyone else;
* a header block over `MAX_HEADER_BYTES` -> 431;
* `Expect: 100-continue` (HTTP/1.1) gets `100 Continue` once the door waits for the
  body (not when the body came with the head, nor before a 413).

What llhttp does not check, `_RequestParser` does the way HTTP/1.1 (and h11, the
parser this door had before) asks: a Host header (exactly one, for HTTP/1.1), no
transfer coding but `chunked`, trailing whitespace cut from header values, no
HTTP/0.9; trailers are dropped; HTTP/1.0 and `Connection: close` end the connection
after the response (as do versions but 1.1, say "HTTP/2.0"). llhttp is stricter than h11 in a few places, all answered 400:
lines must end in CRLF, methods must be ones it knows (uppercase), header values
must hold no control characters and no obsolete line folding, Content-Length must
appear once (never with Transfer-Encoding).

Cost per request: the connection has one cancel scope whose deadline is moved to
the phase's (idle, head, body; none while the app handles the request), and only
when the phase has to wait: a request that arrived whole in one read is parsed
without touching it. Everything a read holds is parsed at once: pipelined requests
queue up (at most one read's worth) and are answered in order. Reads and writes go
straight to the socket; trio is asked to wait only when the kernel has nothing to
give or no room (a read that needed no wait still yields once, so a client that
keeps the socket full starves no one). The response head is written here: status
line, the app's headers (validated once per distinct (name, value) by h11's rules,
`_header_line`), then the framing header.

A WebSocket upgrade is handed, with the raw stream and the bytes read after its
head, to the `on_upgrade` hook.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import httptools
import trio

from stateroom._protocol import HttpRequest, HttpResponse

MAX_HEADER_BYTES = 64 * 1024

Handler = Callable[[HttpRequest, Any], Awaitable[HttpResponse]]
# `on_upgrade(request, stream, trailing)`: owns the connection from the call on;
# `trailing` holds the bytes the client sent after the request (its first frames).
UpgradeHook = Callable[[HttpRequest, trio.SocketStream, bytes], Awaitable[None]]


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        header_timeout: float | None = None,
        idle_timeout: float | None = None,
        body_timeout: float = 60.0,
        on_upgrade: UpgradeHook | None = None,
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

    async def _serve(self, stream: trio.SocketStream) -> None:
        parser = _RequestParser(self.max_body_bytes)
        # One scope for the connection's whole life; its deadline is the current
        # phase's (see `_Phase`) and infinite while the app handles a request.
        phase = _Phase()
        with trio.CancelScope() as deadline:
            refusal = await self._serve_requests(parser, stream, deadline, phase)
        if deadline.cancelled_caught:
            if phase.name == "body":
                await send_all(stream, _simple(408, b"request body timeout\n"))
            elif not parser.idle:
                await send_all(stream, _simple(408, b"request timeout\n"))
        elif refusal is not None:
            await send_all(stream, _simple(*refusal))

    async def _serve_requests(
        self,
        parser: _RequestParser,
        stream: trio.SocketStream,
        deadline: trio.CancelScope,
        phase: _Phase,
    ) -> tuple[int, bytes] | None:
        """Serve requests until the connection ends; returns a refusal to send, if any.

        Runs inside the connection's `deadline` scope: a phase that may wait for the
        client moves its deadline first. What is already read is parsed without
        touching the deadline (a request usually arrives whole in one read).
        """
        first = True
        started = trio.current_time()
        ready = parser.ready
        while True:
            if not ready:
                if parser.refusal is not None:
                    return parser.refusal
                if parser.trailing:
                    # Bytes after an upgrade request nobody took over: the next request.
                    parser.feed(parser.take_trailing())
                    continue
                if parser.idle:
                    if first:
                        # The first request's headers: `header_timeout` from the
                        # connection's start.
                        phase.name = "head"
                        deadline.deadline = started + self.header_timeout
                    else:
                        # Keep-alive: the next request may be `idle_timeout` in
                        # coming; from its first byte on, its headers get
                        # `header_timeout`.
                        phase.name = "idle"
                        deadline.deadline = trio.current_time() + self.idle_timeout
                elif parser.in_body:
                    if phase.name != "body":
                        phase.name = "body"
                        deadline.deadline = trio.current_time() + self.body_timeout
                    if parser.expect_continue:
                        # The client waits for this before sending the body (curl waits
                        # a second for it, then sends anyway). A body refused on its
                        # Content-Length never gets here: its 413 is the answer.
                        parser.expect_continue = False
                        await send_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n")
                elif phase.name != "head":
                    phase.name = "head"
                    deadline.deadline = trio.current_time() + self.header_timeout
                data = await _receive(stream)
                if not data:
                    if parser.idle:
                        return None
                    return 400, b"bad request: the client closed the connection mid-request\n"
                parser.feed(data)
                continue
            first = False
            request, keep_alive, upgrade = ready.popleft()
            phase.name = "app"
            if deadline.deadline != math.inf:
                deadline.deadline = math.inf
            if upgrade and self.on_upgrade is not None:
                # The hook owns the connection from here (handshake, frames, close).
                await self.on_upgrade(request, stream, parser.take_trailing())
                return None
            try:
                response = await self.handler(request, None)
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
            if not await self.write_response(stream, request.method, response, keep_alive):
                return None
            if not keep_alive:
                return None

    async def write_response(
        self, stream: trio.SocketStream, method: str, response: HttpResponse, keep_alive: bool
    ) -> bool:
        """Send `response` (its body unless `method` is HEAD); False if it was refused.

        The head is the status line, the app's headers (validated and encoded once
        per distinct (name, value), `_header_line`), the framing header
        (`content-length`) and, unless `keep_alive`, `Connection: close`. A response
        HTTP cannot carry (status outside 200-999, a body on 204/304, an invalid
        header) is replaced by a 500 and the connection closes.
        """
        status = response.status
        body = response.body
        try:
            if not 200 <= status < 1000:
                raise h11.LocalProtocolError(
                    f"Response status_code should be in range [200, 1000), not {status}"
                )
            send_body = method != "HEAD" and body
            if send_body and (status == 204 or status == 304):
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            lines = [
                _header_line(k, v)
                for k, v in response.headers
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
        except h11.LocalProtocolError as exc:
            await send_all(stream, _simple(500, f"bad response from app: {exc}\n".encode()))
            return False
        head = b"HTTP/1.1 %d \r\n%scontent-length: %d\r\n%s\r\n" % (
            status,
            b"".join(lines),
            len(body),
            b"" if keep_alive else b"Connection: close\r\n",
        )
        await send_all(stream, head + body if send_body else head)
        return True


class _Phase:
    """What a connection is waiting for: "head", "idle", "body" or "app"."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "head"


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is in `refusal`."""


class _RequestParser:
    """One connection's requests out of the bytes it sends (sans-I/O, over httptools).

    `feed` parses everything given: each complete request goes to `ready` as
    (request, keep_alive, upgrade); the first error stops parsing for good and
    leaves the answer in `refusal`; an upgrade request (`Connection: upgrade`)
    stops it too, the bytes after it kept in `trailing`.

    Invariant: `refusal` set means nothing more is parsed; `trailing` is only set
    while the upgrade request it follows is the last of `ready` (or was just taken).
    """

    __slots__ = (
        "ready",
        "refusal",
        "trailing",
        "idle",
        "in_body",
        "_parser",
        "_max_body",
        "_url",
        "_headers",
        "_body",
        "_size",
        "_head_bytes",
        "_feeds",
        "_head_feed",
        "_feed_len",
        "_host",
        "_fresh",
        "_keep_alive",
        "_upgrade",
        "expect_continue",
    )

    def __init__(self, max_body_bytes: int) -> None:
        # Complete requests not yet served, oldest first.
        self.ready: deque[tuple[HttpRequest, bool, bool]] = deque()
        # (status, body) to answer with, once parsing failed; then nothing is parsed.
        self.refusal: tuple[int, bytes] | None = None
        # Bytes after an upgrade request (its WebSocket frames, or the next request).
        self.trailing = b""
        # No byte of the next request seen yet (between requests).
        self.idle = True
        # The current request's head is parsed; its body is not complete.
        self.in_body = False
        self._parser = httptools.HttpRequestParser(self)
        self._max_body = max_body_bytes
        # The current request's target, headers (lowercased names), body chunks, size.
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        # Bytes of the current, incomplete head seen so far (a lower bound when the
        # head began in the middle of a read).
        self._head_bytes = 0
        # Reads fed so far; the one the current head began in; the length of the
        # one being fed; whether no request ended in it yet.
        self._feeds = 0
        self._head_feed = 0
        self._feed_len = 0
        self._fresh = True
        # The current request's connection semantics (set when its head is parsed).
        self._host = "127.0.0.1"
        self._keep_alive = True
        self._upgrade = False
        # The current request asked for `100 Continue` before sending its body.
        self.expect_continue = False

    def feed(self, data: bytes) -> None:
        """Parse `data` (bytes the client sent, in order)."""
        if self.refusal is not None:
            return
        self._feeds += 1
        self._feed_len = len(data)
        self._fresh = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            if self.refusal is None:
                status = 505 if "HTTP version" in str(exc) else 400
                self.refusal = status, f"bad request: {exc}\n".encode()
            return
        if not self.idle and not self.in_body:
            if self._head_feed != self._feeds:
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self.refusal = 431, f"request headers exceed {MAX_HEADER_BYTES} bytes\n".encode()

    def take_trailing(self) -> bytes:
        data, self.trailing = self.trailing, b""
        return data

    def _refuse(self, status: int, text: str) -> None:
        self.refusal = status, text.encode()
        raise _Refused()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.idle = False
        # A head that starts a read is measured whole; one that starts after the
        # end of another request in the same read, from the next read on.
        self._head_bytes = self._feed_len if self._fresh else 0
        self._head_feed = self._feeds

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_body:  # trailers (after a chunked body) are dropped
            key = name.decode("latin-1").lower()
            text = value.rstrip(b" \t").decode("latin-1")
            if key == "transfer-encoding":
                text = text.lower()
            self._headers.append((key, text))

    def on_headers_complete(self) -> None:
        self.in_body = True
        parser = self._parser
        version = parser.get_http_version()
        headers = self._headers
        target = self._url
        hosts = 0
        host = "127.0.0.1"
        length: int | None = None
        keep_alive = version == "1.1"
        upgrade = False
        expect_continue = False
        size = len(target)
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == "host":
                if not hosts:
                    host = value
                hosts += 1
            elif name == "content-length":
                length = int(value)  # llhttp checked it: digits, once
            elif name == "transfer-encoding":
                if value != "chunked":
                    self._refuse(501, "bad request: Only Transfer-Encoding: chunked is supported\n")
            elif name == "connection":
                if "close" in [token.strip().lower() for token in value.split(",")]:
                    keep_alive = False
            elif name == "upgrade" and value.lower() == "websocket":
                upgrade = True
            elif name == "expect" and value.lower() == "100-continue":
                expect_continue = version == "1.1"
        if version == "0.9":
            self._refuse(400, "bad request: HTTP/0.9 is not supported\n")
        if hosts > 1:
            self._refuse(400, "bad request: Found multiple Host: headers\n")
        if hosts == 0 and version == "1.1":
            self._refuse(400, "bad request: Missing mandatory Host: header\n")
        method = parser.get_method()
        if size + len(method) > MAX_HEADER_BYTES:
            self._refuse(431, f"request headers exceed {MAX_HEADER_BYTES} bytes\n")
        if not target.startswith(b"/"):
            self._refuse(400, "bad request: target must be an absolute path\n")
        if length is not None and length > self._max_body:
            self._refuse(413, f"request body exceeds {self._max_body} bytes\n")
        self._host = host
        self._keep_alive = keep_alive
        self._upgrade = upgrade
        self.expect_continue = expect_continue

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._refuse(413, f"request body exceeds {self._max_body} bytes\n")
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body
        request = HttpRequest(
            self._parser.get_method().decode("ascii"),
            f"http://{self._host}{self._url.decode('ascii')}",
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
        )
        self.ready.append((request, self._keep_alive, self._upgrade))
        self.idle = True
        self.in_body = False
        self.expect_continue = False
        self._fresh = False
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0


def _simple(status: int, body: bytes) -> bytes:
    """A plain-text answer that closes the connection (refusals, timeouts)."""
    return (
        b"HTTP/1.1 %d \r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body))
    ) + body


# Encoded header lines of responses by (name, value), validated by h11; emptied when full.
_HEADER_LINES: dict[tuple[str, str], bytes] = {}
_HEADER_LINES_MAX = 4096


def _header_line(name: str, value: str) -> bytes:
    """`name: value\\r\\n` as h11 writes it; raises `h11.LocalProtocolError` if invalid."""
    line = _HEADER_LINES.get((name, value))
    if line is None:
        line = _encode_header(name, value)
        if len(_HEADER_LINES) >= _HEADER_LINES_MAX:
            _HEADER_LINES.clear()
        _HEADER_LINES[(name, value)] = line
    return line


def _encode_header(name: str, value: str) -> bytes:
    # h11 validates a header when it builds the event, and writes the raw name.
    h11.Response(status_code=200, headers=[(name, value)])
    return name.encode("ascii") + b": " + value.encode("ascii") + b"\r\n"


def switching_protocols_head(headers: list[tuple[str, str]]) -> bytes:
    """The head of a 101 response carrying `headers` (not cached: the accept token is
    new for every handshake); raises `h11.LocalProtocolError` if a header is invalid."""
    return b"HTTP/1.1 101 \r\n" + b"".join(_encode_header(k, v) for k, v in headers) + b"\r\n"


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
