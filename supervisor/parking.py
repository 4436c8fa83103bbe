"""The parking lot: WebSockets held by the supervisor on behalf of their objects (SPEC §7).

A socket is *parked* once its object accepted it and the handshake completed. The
TCP connection, the WebSocket protocol state (`websocket.py`), the socket's tags,
its attachment and its last auto-response time live here, in the supervisor, never
in a worker. The object holds only handles (`worker/sockets.py`). That is what lets
an object hibernate (its instance dropped, its worker's memory freed) and lets
sockets outlive worker crashes and redeploys.

Accepting (the upgrade request travels like any HTTP request):

1. `front.py` hands an upgrade request to `on_upgrade`, which checks the handshake
   and routes the request through `Supervisor.handle`: app paths reach `Default`
   (any worker), `/_stateroom/v1/fetch/{binding}/{key}/...` reaches the object
   directly after the token check.
2. The object calls `ctx.accept_web_socket(server, tags)`: its worker sends
   `WsAccepted(ws_id, target, tags)` at once. The socket is *pending*.
3. The object's `Response(status=101, web_socket=client)` flows back as an ordinary
   response (through `Fetch`/`Call` relays when `Default` ran on another worker).
   The owner's `WsAccepted` always arrives first: it precedes the owner's reply on
   the same connection, and any relay starts only after that reply.
4. `on_upgrade` finds the pending socket by `ws_id`, sends the 101 and parks it.
   Any other response is sent as is and the connection closes. A pending socket
   whose 101 never comes (the event failed, the client left) is dropped after
   `PENDING_TTL` and its object gets a close event (1006).

Delivering: each parked socket's connection task reads messages and hands each to
the owning worker as `WsEvent`, one at a time per socket (the next is read only
after the `Reply`), so a sender's messages reach its object in order, a slow
object pushes back on the client through TCP, and a delivery caught by a worker
crash is retried on the restarted worker when it had no durable effect. A message
equal to the object's auto-response request is answered here without waking the
object. Close (clean, or 1006 on an abrupt drop) and errors (protocol error,
message over `--max-ws-message-bytes` -> 1009) are delivered likewise, once the
socket has left the lot, with its tags and attachment.

Invariants:
* `self.sockets` holds every pending and parked socket, `self.objects[id].sockets`
  the same sockets grouped by object, in accept order; `self.parked` counts the
  entries with a connection (`sockets_parked`), `self.parked_by_shard` the same by
  the shard of their object (an id's shard never changes).
* A socket leaves the lot exactly once (`_unpark`); after that no event of it is
  delivered except the one that reports its end, and only if the object did not
  end it itself (`detached`).
* Objects are keyed by id alone: ids are unique across namespaces, and a class
  rename (`on_deploy`) only rewrites the delivery target.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import h11
import trio

from stateroom._errors import DurableObjectError, WorkerCrashedError
from stateroom._protocol import (
    HttpRequest,
    HttpResponse,
    Stats,
    Target,
    WsAccepted,
    WsAutoResponded,
    WsClose,
    WsEvent,
    WsRestore,
    WsRestored,
    WsSend,
    WsSetAttachment,
    WsSetOptions,
    WsSocket,
    WsSync,
    WsSynced,
    shard_of,
)

from .front import send_all, switching_protocols_head
from .websocket import (
    Closed,
    ServerWebSocket,
    WriteBatcher,
    accept_headers,
    data_frame,
    handshake_error,
)

# Seconds a pending socket waits for its 101 before it is dropped.
PENDING_TTL = 60.0
# Seconds a peer gets to answer a close we started before the TCP connection drops.
CLOSE_TIMEOUT = 5.0
# Attempts to deliver one event across worker crashes / overload before dropping it.
DELIVERY_ATTEMPTS = 6
# Frames an object may send on a pending socket before its 101 is out.
MAX_EARLY_FRAMES = 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


class ParkedObject:
    """An object with sockets (or socket settings) in the lot."""

    __slots__ = (
        "target",
        "sockets",
        "auto_request",
        "auto_response",
        "auto_frame",
        "event_timeout_ms",
    )

    def __init__(self, target: Target) -> None:
        # Where its events go; the class name changes on a rename.
        self.target = target
        # ws_id -> socket, pending and parked, in accept order.
        self.sockets: dict[int, ParkedSocket] = {}
        # Auto-response pair as UTF-8 bytes (None: none) and the encoded answer frame.
        self.auto_request: bytes | None = None
        self.auto_response: str | None = None
        self.auto_frame: bytes = b""
        # `set_hibernatable_web_socket_event_timeout`, kept for fresh instances.
        self.event_timeout_ms: int | None = None


class ParkedSocket:
    __slots__ = (
        "ws_id",
        "obj",
        "tags",
        "attachment",
        "auto_response_ms",
        "conn",
        "accepted_at",
        "early",
        "close_request",
        "detached",
    )

    def __init__(self, ws_id: int, obj: ParkedObject, tags: list[str]) -> None:
        self.ws_id = ws_id
        self.obj = obj
        self.tags = tags
        # Codec bytes set by `serialize_attachment`, or None.
        self.attachment: bytes | None = None
        # Epoch ms of the last auto-response on this socket.
        self.auto_response_ms: int | None = None
        # The connection once the handshake completed; None while pending.
        self.conn: ServerWebSocket | None = None
        self.accepted_at = trio.current_time()
        # Frames the object sent while the socket was pending (sent after the 101).
        self.early: list[bytes] = []
        # (code, reason) when the object closed the socket while it was pending.
        self.close_request: tuple[int, str] | None = None
        # True once the object (or the runtime) ended the socket: no end event then.
        self.detached = False

    def record(self) -> WsSocket:
        return WsSocket(self.ws_id, list(self.tags), self.attachment, self.auto_response_ms)


class Parking:
    """Supervisor extension: the WebSocket front door and the lot of parked sockets."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        settings = sup.settings
        self.max_message_bytes = int(settings.max_ws_message_bytes)
        self.max_buffered_bytes = max(16 << 20, 2 * self.max_message_bytes)
        # Every pending or parked socket by ws_id.
        self.sockets: dict[int, ParkedSocket] = {}
        # Objects with sockets or socket settings, by object id.
        self.objects: dict[str, ParkedObject] = {}
        # Sockets with a completed handshake (the `sockets_parked` gauge), in all and
        # by shard (a worker's figure sums its shards).
        self.parked = 0
        self.parked_by_shard: dict[int, int] = {}
        self.nursery: trio.Nursery | None = None
        # Writes every socket's queued frames once per scheduling pass (websocket.py).
        self.batcher: WriteBatcher | None = None
        self.stopping = False
        sup.http.on_upgrade = self.on_upgrade

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.batcher = WriteBatcher(nursery)
            task_status.started()
            while True:
                await trio.sleep(PENDING_TTL / 4)
                self._expire_pending()

    def _expire_pending(self) -> None:
        deadline = trio.current_time() - PENDING_TTL
        for s in [s for s in self.sockets.values() if s.conn is None and s.accepted_at < deadline]:
            self._unpark(s)
            assert self.nursery is not None
            self.nursery.start_soon(
                self._deliver_end,
                s,
                "close",
                1006,
                "the WebSocket handshake did not complete",
                False,
            )

    async def stop(self) -> None:
        """Supervisor shutdown: close every parked socket with 1012 (service restart)."""
        self.stopping = True
        live = [s for s in self.sockets.values() if s.conn is not None]
        for s in live:
            s.detached = True
            assert s.conn is not None
            s.conn.close(1012, "service restart")
        with trio.move_on_after(1.0):
            for s in live:
                assert s.conn is not None
                await s.conn.wait_flushed(1.0)
        for s in live:
            assert s.conn is not None
            s.conn.abort()

    # ------------------------------------------------------------------ gauges

    def sockets_parked(self, worker_index: int | None = None) -> int:
        if worker_index is None:
            return self.parked
        owners = self.sup.pool.owners
        return sum(n for shard, n in self.parked_by_shard.items() if owners[shard] == worker_index)

    def _shard(self, s: ParkedSocket) -> int:
        return shard_of(s.obj.target.id, self.sup.pool.shard_count)

    # ------------------------------------------------------------------ worker messages

    def on_worker_message(self, w: Any, msg: Any) -> bool:
        if isinstance(msg, WsSend):
            frame = data_frame(msg.data, msg.text)
            for ws_id in msg.ws_ids:
                s = self.sockets.get(ws_id)
                if s is None:
                    continue
                if s.conn is not None:
                    s.conn.send_frame(frame)
                elif len(s.early) < MAX_EARLY_FRAMES:
                    s.early.append(frame)
            return True
        if isinstance(msg, Stats):
            return False
        if isinstance(msg, WsAccepted):
            if msg.ws_id not in self.sockets:
                obj = self._object(msg.target)
                s = ParkedSocket(msg.ws_id, obj, list(msg.tags))
                self.sockets[msg.ws_id] = s
                obj.sockets[msg.ws_id] = s
            return True
        if isinstance(msg, WsClose):
            s = self.sockets.get(msg.ws_id)
            if s is not None:
                self._close_by_object(s, msg.code, msg.reason)
            return True
        if isinstance(msg, WsSetAttachment):
            s = self.sockets.get(msg.ws_id)
            if s is not None:
                s.attachment = msg.attachment
            return True
        if isinstance(msg, WsSetOptions):
            obj = self._object(msg.target)
            obj.auto_request = (
                msg.auto_request.encode("utf-8") if msg.auto_request is not None else None
            )
            obj.auto_response = msg.auto_response
            obj.auto_frame = data_frame((msg.auto_response or "").encode("utf-8"), True)
            obj.event_timeout_ms = msg.event_timeout_ms
            if not obj.sockets and obj.auto_request is None and obj.event_timeout_ms is None:
                self.objects.pop(obj.target.id, None)
            return True
        if isinstance(msg, WsRestore):
            found = self.objects.get(msg.target.id)
            if found is None:
                reply = WsRestored(msg.request_id)
            else:
                reply = WsRestored(
                    msg.request_id,
                    [s.record() for s in found.sockets.values()],
                    found.auto_request.decode("utf-8") if found.auto_request is not None else None,
                    found.auto_response,
                    found.event_timeout_ms,
                )
            self._send(w, reply)
            return True
        if isinstance(msg, WsSync):
            pool = self.sup.pool
            objects = [
                (o.target.class_name, o.target.id, len(o.sockets))
                for o in self.objects.values()
                if o.sockets and pool.owners[shard_of(o.target.id, pool.shard_count)] == w.index
            ]
            self._send(w, WsSynced(msg.request_id, objects))
            return True
        return False

    def _send(self, w: Any, msg: Any) -> None:
        conn = w.conn
        if conn is not None and not conn.closed:
            try:
                conn.send(msg)
            except trio.ClosedResourceError:
                pass

    def _object(self, target: Target) -> ParkedObject:
        obj = self.objects.get(target.id)
        if obj is None:
            obj = self.objects[target.id] = ParkedObject(target)
        elif target.name is not None and obj.target.name is None:
            obj.target = target
        return obj

    def _close_by_object(self, s: ParkedSocket, code: int, reason: str) -> None:
        """`ws.close()` from the object: the socket leaves the lot, no end event."""
        s.detached = True
        if s.conn is None:
            s.close_request = (code, reason)  # sent right after the 101
            return
        self._unpark(s)
        s.conn.close(code, reason)
        self._close_timer(s)

    def _close_timer(self, s: ParkedSocket) -> None:
        """A close we started: the peer has `CLOSE_TIMEOUT` seconds to answer."""
        assert self.nursery is not None
        conn = s.conn

        async def expire() -> None:
            await trio.sleep(CLOSE_TIMEOUT)
            if conn is not None:
                conn.abort()

        self.nursery.start_soon(expire)

    def _unpark(self, s: ParkedSocket) -> None:
        if self.sockets.pop(s.ws_id, None) is None:
            return
        if s.conn is not None:
            self.parked -= 1
            shard = self._shard(s)
            left = self.parked_by_shard[shard] - 1
            if left:
                self.parked_by_shard[shard] = left
            else:
                del self.parked_by_shard[shard]
        obj = s.obj
        obj.sockets.pop(s.ws_id, None)
        if not obj.sockets and obj.auto_request is None and obj.event_timeout_ms is None:
            if self.objects.get(obj.target.id) is obj:
                del self.objects[obj.target.id]

    # ------------------------------------------------------------------ hooks

    def on_object_deleted(self, ns_key: int, object_id: str) -> None:
        """An admin deleted the object: its clients see a close (1001)."""
        obj = self.objects.pop(object_id, None)
        if obj is None:
            return
        for s in list(obj.sockets.values()):
            self._end_by_runtime(s, 1001, "the object was deleted")

    async def on_deploy(self, dep: Any, plan: Any) -> None:
        """Renames move sockets to the new class; deleted classes close theirs (1001)."""
        for step in plan.get("steps", []):
            if step[0] == "rename":
                old, new = step[1], step[2]
                for obj in self.objects.values():
                    if obj.target.class_name == old:
                        obj.target = Target(new, obj.target.id, obj.target.name)
            elif step[0] == "delete":
                doomed = [o for o in self.objects.values() if o.target.class_name == step[1]]
                for obj in doomed:
                    self.objects.pop(obj.target.id, None)
                    for s in list(obj.sockets.values()):
                        self._end_by_runtime(s, 1001, f"class {step[1]} was deleted")

    def _end_by_runtime(self, s: ParkedSocket, code: int, reason: str) -> None:
        s.detached = True
        self._unpark(s)
        if s.conn is not None:
            s.conn.close(code, reason)
            self._close_timer(s)

    # ------------------------------------------------------------------ the front door

    async def on_upgrade(
        self, request: HttpRequest, stream: trio.SocketStream, trailing: bytes
    ) -> None:
        """Own an upgrade request's connection: route it, then park or refuse the socket.

        `trailing` holds what the client sent after the request (its first frames).
        """
        http = self.sup.http
        problem = handshake_error(request)
        if problem is not None:
            headers = [
                ("content-type", "text/plain; charset=utf-8"),
                ("sec-websocket-version", "13"),
            ]
            status = 426 if "Version" in problem else 400
            await http.write_response(
                stream, "GET", HttpResponse(status, headers, (problem + "\n").encode()), False
            )
            return
        if self.stopping:
            await http.write_response(
                stream, "GET", _text(503, "the runtime is shutting down"), False
            )
            return
        try:
            response = await self.sup.handle(request, None)
        except Exception as exc:  # noqa: BLE001 - one bad request never kills the front door
            response = _text(500, f"internal error: {exc!r}")
        if response.status != 101 or response.web_socket is None:
            if response.status == 101:
                response = _text(
                    500, "a 101 response needs web_socket=client (a WebSocketPair half)"
                )
            await http.write_response(stream, request.method, response, False)
            return
        s = self.sockets.get(response.web_socket)
        if s is None or s.conn is not None:
            await http.write_response(
                stream,
                request.method,
                _text(
                    500,
                    "the WebSocket was not accepted: call ctx.accept_web_socket(server) in the object",
                ),
                False,
            )
            return
        try:
            head = switching_protocols_head(accept_headers(request, response.headers))
            # Written without yielding when the kernel takes it (it does on a fresh
            # connection), so the socket counts as parked before anyone else runs:
            # a client that has its 101 sees itself in `sockets_parked`.
            await send_all(stream, head)
        except (
            h11.LocalProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ):
            self._unpark(s)
            if not s.detached:
                await self._deliver_end(
                    s, "close", 1006, "the client left during the handshake", False
                )
            return
        assert self.nursery is not None
        ws = ServerWebSocket(
            stream,
            self.nursery,
            trailing=trailing,
            batcher=self.batcher,
            max_message_bytes=self.max_message_bytes,
            max_buffered_bytes=self.max_buffered_bytes,
        )
        if self.sockets.get(s.ws_id) is not s:
            # Dropped (object deleted, class deleted, expired) while the 101 travelled.
            ws.close(1001, "the socket's object is gone")
            await ws.wait_flushed(1.0)
            await ws.aclose()
            return
        s.conn = ws
        self.parked += 1
        shard = self._shard(s)
        self.parked_by_shard[shard] = self.parked_by_shard.get(shard, 0) + 1
        early, s.early = s.early, []
        for frame in early:
            ws.send_frame(frame)
        if s.close_request is not None:
            self._unpark(s)
            ws.close(*s.close_request)
            self._close_timer(s)
        await self._serve_socket(s, ws)

    async def _serve_socket(self, s: ParkedSocket, ws: ServerWebSocket) -> None:
        try:
            while True:
                event = await ws.receive()
                if isinstance(event, Closed):
                    break
                if s.detached:
                    continue  # closing: messages after our close frame are dropped
                obj = s.obj
                if event.text and obj.auto_request is not None and event.data == obj.auto_request:
                    self._auto_respond(s, ws)
                    continue
                await self._deliver(s, "message", data=event.data, text=event.text)
            self._unpark(s)
            await ws.wait_flushed(1.0)
        finally:
            with trio.CancelScope(shield=True):
                await ws.aclose()
        if s.detached or self.stopping:
            return
        if ws.overflowed:
            await self._deliver_end(s, "close", 1006, "the client stopped reading", False)
        elif event.error is not None:
            await self._deliver_end(s, "error", event.code, event.error, False)
        else:
            await self._deliver_end(s, "close", event.code, event.reason, event.was_clean)

    def _auto_respond(self, s: ParkedSocket, ws: ServerWebSocket) -> None:
        """Answer from the object's auto-response pair; the object stays asleep."""
        ws.send_frame(s.obj.auto_frame)
        s.auto_response_ms = now = _now_ms()
        w = self.sup.owner(s.obj.target)
        self._send(w, WsAutoResponded(s.obj.target, s.ws_id, now))

    # ------------------------------------------------------------------ delivery

    async def _deliver_end(
        self, s: ParkedSocket, kind: str, code: int, reason: str, was_clean: bool
    ) -> None:
        await self._deliver(
            s, kind, code=code, reason=reason, was_clean=was_clean, socket=s.record()
        )

    async def _deliver(self, s: ParkedSocket, kind: str, **fields: Any) -> None:
        """Hand one event to the owning worker and wait until the object handled it.

        Retried (same event, same order) when the worker crashed before the event
        had a durable effect, or when the object is overloaded; dropped otherwise.
        """
        delay = 0.05
        for _attempt in range(DELIVERY_ATTEMPTS):
            target = s.obj.target
            w = self.sup.owner(target)
            try:
                reply = await self.sup.pool.request(
                    w,
                    lambda rid, target=target: WsEvent(rid, target, s.ws_id, kind, **fields),
                    wait_ready=30,
                )
            except WorkerCrashedError as exc:
                if not exc.retryable:
                    return
                continue  # the restarted worker gets it
            except DurableObjectError as exc:
                if not exc.retryable:
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if reply.ok:
                return
            error = reply.error or {}
            if error.get("overloaded"):
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if error.get("kind") in ("reset", "crashed") and error.get("retryable"):
                continue
            return  # the handler raised: the worker logged it
        print(
            f"stateroom: dropped a WebSocket {kind} event for {s.obj.target.id[:16]} after"
            f" {DELIVERY_ATTEMPTS} attempts",
            file=sys.stderr,
            flush=True,
        )


def _text(status: int, text: str) -> HttpResponse:
    return HttpResponse(
        status, [("content-type", "text/plain; charset=utf-8")], (text + "\n").encode()
    )


__all__ = ["Parking", "ParkedObject", "ParkedSocket"]
