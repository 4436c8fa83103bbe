"""WebSocket handles on the worker side (SPEC §7); the connections live in the supervisor.

An object holds *handles*: `WebSocket` objects that name a socket (`ws_id`) parked in
the supervisor (`supervisor/parking.py`). What a handle needs synchronously (its
tags, its attachment, its last auto-response time) is mirrored here, per live
object, in `ObjectSockets`; the supervisor keeps the authoritative copy, so the
mirror can be dropped whenever the instance goes:

* Accept: `ctx.accept_web_socket(server, tags)` records the socket here and tells
  the supervisor at once (`WsAccepted`); the object's 101 response completes it.
* Events: the supervisor sends `WsEvent` (message, close, error). It is queued on
  the object like any other event (`ObjectHost.submit`, synchronously in arrival
  order, so gates and ordering hold) and answered with `Reply` once the handler
  returned; the supervisor sends a socket's next event only after that.
* Output: `ws.send` and `ws.close` go through the object's output gate
  (`host.send_output`): held until the object's earlier writes are durable. Released
  output is buffered per worker and flushed at the next scheduling point, where
  consecutive sends of the same message become one `WsSend` naming every receiver
  (a broadcast crosses the socket pair once and is framed once).
* Hibernation: an idle object whose only ties are sockets is evicted after
  `--hibernate-after`; its `ObjectSockets` goes with the instance. `parked` keeps
  only the number of sockets per object id. Before an object with parked sockets is
  constructed again (after hibernation, a redeploy or a worker crash), its runner
  awaits `wait_restored`, which fetches the handles' state from the supervisor
  (`WsRestore`), so the constructor already sees every socket and attachment.
* At start the worker asks which objects of its shards have parked sockets
  (`WsSync`), which is how a restarted worker learns about sockets it never saw.

Invariants:
* A live object's `ObjectSockets` lists exactly its open sockets, in accept order;
  `parked[id]` equals its length while the object is live (and is the last known
  count while it is not).
* Output of one object leaves in the order it was released: sends and closes share
  one buffer, flushed in order.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import trio

from stateroom import _codec
from stateroom._errors import error_to_fields
from stateroom._object import WebSocket, WebSocketRequestResponsePair
from stateroom._protocol import (
    Reply,
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
)

from .catalog import Event

MAX_TAGS = 10
MAX_TAG_CHARS = 256
MAX_SOCKETS_PER_OBJECT = 32_768
MAX_ATTACHMENT_BYTES = 16 * 1024
MAX_AUTO_RESPONSE_CHARS = 2048
MAX_EVENT_TIMEOUT_MS = 7 * 24 * 3600 * 1000


class SocketEvent(Event):
    """A `WsEvent` queued on its object: answers the supervisor when it finishes.

    Replying from `finish` (called exactly once however the event ends: handled,
    raised, reset, its class deleted) needs no waiting task per event, which
    matters when thousands of sockets each have a message in flight.
    """

    __slots__ = ("registry",)

    def __init__(self, fn: Any, request_id: int, registry: SocketRegistry) -> None:
        super().__init__(fn, request_id)
        self.registry = registry

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        super().finish(result, error)
        assert self.request_id is not None
        # The event's released output precedes its Reply on the wire: a Reply means
        # the output is on its way, and a crash loses both (the retry re-sends it).
        self.registry.flush_output()
        if error is None:
            self.registry.send(Reply(self.request_id, True))
        else:
            self.registry.send(Reply(self.request_id, False, error=error_to_fields(error)))


class SocketEntry:
    """One open socket of a live object, as its handle sees it."""

    __slots__ = ("ws_id", "tags", "attachment", "auto_ms", "handle", "owner", "open")

    def __init__(self, ws_id: int, tags: tuple[str, ...], owner: ObjectSockets) -> None:
        self.ws_id = ws_id
        self.tags = tags
        # Codec bytes from `serialize_attachment`, or None.
        self.attachment: bytes | None = None
        # Epoch ms of the last auto-response the supervisor sent on it.
        self.auto_ms: int | None = None
        self.handle: WebSocket = None  # type: ignore[assignment]
        self.owner = owner
        # False once closed (by the object, or an end event was delivered).
        self.open = True


class ObjectSockets:
    """The socket handles of one live object; also the runtime behind its handles."""

    def __init__(self, registry: SocketRegistry, host: Any) -> None:
        self.registry = registry
        self.host = host
        # Open sockets by ws_id, in accept order.
        self.entries: dict[int, SocketEntry] = {}
        self.auto_pair: WebSocketRequestResponsePair | None = None
        self.event_timeout_ms: int | None = None
        # The last str sent and its UTF-8 bytes: a broadcast encodes once.
        self._last_text: str | None = None
        self._last_bytes = b""

    def add(
        self, ws_id: int, tags: tuple[str, ...], handle: WebSocket | None = None
    ) -> SocketEntry:
        entry = SocketEntry(ws_id, tags, self)
        if handle is None:
            handle = WebSocket()
            handle._ws_id = ws_id
        handle._runtime = self
        handle._entry = entry  # type: ignore[attr-defined]
        entry.handle = handle
        self.entries[ws_id] = entry
        self.registry.parked[self.host.target.id] = len(self.entries)
        return entry

    def remove(self, entry: SocketEntry) -> None:
        entry.open = False
        if self.entries.pop(entry.ws_id, None) is not None:
            oid = self.host.target.id
            if self.entries:
                self.registry.parked[oid] = len(self.entries)
            else:
                self.registry.parked.pop(oid, None)

    def entry_of(self, ws: Any) -> SocketEntry:
        entry = getattr(ws, "_entry", None)
        if not isinstance(entry, SocketEntry) or entry.owner is not self:
            raise ValueError(f"{ws!r} is not a WebSocket accepted by this object")
        return entry

    def options(self) -> WsSetOptions:
        pair = self.auto_pair
        return WsSetOptions(
            self.host.target,
            pair.request if pair is not None else None,
            pair.response if pair is not None else None,
            self.event_timeout_ms,
        )

    # ------------------------------------------------------------------ handle runtime

    def ws_send(self, ws: WebSocket, message: str | bytes) -> None:
        entry = self.entry_of(ws)
        if isinstance(message, str):
            if message is self._last_text:
                data = self._last_bytes
            else:
                data = message.encode("utf-8")
                self._last_text, self._last_bytes = message, data
            text = True
        else:
            data, text = message, False
        limit = self.registry.max_message_bytes
        if len(data) > limit:
            raise ValueError(
                f"WebSocket message of {len(data)} bytes exceeds the limit of {limit} bytes"
            )
        if not entry.open:
            return  # the peer is gone: nothing to deliver to
        registry, ws_id = self.registry, entry.ws_id
        self.host.send_output(lambda: registry.queue_send(ws_id, data, text))

    def ws_close(self, ws: WebSocket, code: int = 1000, reason: str = "") -> None:
        entry = self.entry_of(ws)
        if (
            not isinstance(code, int)
            or isinstance(code, bool)
            or not (code == 1000 or 3000 <= code <= 4999)
        ):
            raise ValueError(f"close code must be 1000 or in 3000-4999, not {code!r}")
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason must be a str of at most 123 UTF-8 bytes")
        if not entry.open:
            return
        self.remove(entry)
        registry, ws_id = self.registry, entry.ws_id
        self.host.send_output(lambda: registry.queue_close(ws_id, code, reason))

    def ws_set_attachment(self, ws: WebSocket, value: Any) -> None:
        entry = self.entry_of(ws)
        data = _codec.encode(value)
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise ValueError(
                f"WebSocket attachment of {len(data)} encoded bytes exceeds the limit of"
                f" {MAX_ATTACHMENT_BYTES} bytes (16 KiB)"
            )
        entry.attachment = data
        if entry.open:
            self.registry.send(WsSetAttachment(entry.ws_id, data))

    def ws_get_attachment(self, ws: WebSocket) -> Any:
        entry = self.entry_of(ws)
        return None if entry.attachment is None else _codec.decode(entry.attachment)


class SocketRegistry:
    """The worker's socket bookkeeping: per-object mirrors, counts, output buffer."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Object id -> number of its sockets parked in the supervisor (objects of this
        # worker's shards only; absent means none).
        self.parked: dict[str, int] = {}
        # Outstanding `WsRestore`/`WsSync` requests: request_id -> [event, reply].
        self._waiting: dict[int, list[Any]] = {}
        self._next_id = 0
        # Released output not yet sent: (ws_id, data, text) for sends, WsClose for closes.
        self._out: list[Any] = []
        self._flush_scheduled = False
        # Set once the supervisor answered `WsSync`: `parked` is complete from then on.
        self._synced = trio.Event()

    @property
    def max_message_bytes(self) -> int:
        return int(self.worker.settings.get("max_ws_message_bytes", 32 * 1024 * 1024))

    def send(self, msg: Any) -> None:
        try:
            self.worker.conn.send(msg)
        except trio.ClosedResourceError:
            pass  # supervisor gone: the worker is about to exit

    def start(self) -> None:
        """Ask the supervisor which objects of this worker have parked sockets."""
        self._request(lambda rid: WsSync(rid), self._on_synced)

    def _on_synced(self, reply: WsSynced) -> None:
        for _class_name, oid, count in reply.objects:
            if count:
                self.parked[oid] = count
        self._synced.set()

    def _request(self, make: Any, on_reply: Any = None) -> list[Any]:
        self._next_id += 1
        slot: list[Any] = [trio.Event(), None, on_reply]
        self._waiting[self._next_id] = slot
        self.send(make(self._next_id))
        return slot

    # ------------------------------------------------------------------ catalog hooks

    def of(self, host: Any) -> ObjectSockets:
        """The socket mirror of a live object (empty if it has no sockets)."""
        sockets = getattr(host, "web_sockets", None)
        if sockets is None:
            sockets = host.web_sockets = ObjectSockets(self, host)
        return sockets

    def count(self, host: Any) -> int:
        sockets = getattr(host, "web_sockets", None)
        if sockets is not None:
            return len(sockets.entries)
        return self.parked.get(host.target.id, 0)

    async def wait_restored(self, host: Any) -> None:
        """Before constructing `host`: rebuild its socket handles from the supervisor.

        Returns at once (without yielding) when the mirror is there or the object
        has no parked sockets (known once the supervisor answered this worker's
        `WsSync`, which a fresh worker waits for here). Cancellation leaves the host without a mirror (the
        next construction asks again).
        """
        if getattr(host, "web_sockets", None) is not None:
            return
        if not self._synced.is_set():
            await self._synced.wait()  # only in the first moments of a fresh worker
        if not self.parked.get(host.target.id):
            return
        slot = self._request(lambda rid: WsRestore(rid, host.target))
        await slot[0].wait()
        reply: WsRestored = slot[1]
        if getattr(host, "web_sockets", None) is not None:
            return
        sockets = ObjectSockets(self, host)
        for record in reply.sockets:
            entry = sockets.add(record.ws_id, tuple(record.tags))
            entry.attachment = record.attachment
            entry.auto_ms = record.auto_response_ms
        if reply.auto_request is not None and reply.auto_response is not None:
            sockets.auto_pair = WebSocketRequestResponsePair(
                reply.auto_request, reply.auto_response
            )
        sockets.event_timeout_ms = reply.event_timeout_ms
        host.web_sockets = sockets
        if not sockets.entries:
            self.parked.pop(host.target.id, None)

    def on_construct(self, host: Any) -> None:
        pass

    # ------------------------------------------------------------------ ctx API

    def accept(self, host: Any, ws: Any, tags: Any) -> None:
        if not isinstance(ws, WebSocket) or ws._ws_id is None or ws._peer is None:
            raise TypeError("accept_web_socket takes the server half of a WebSocketPair()")
        if getattr(ws, "_entry", None) is not None:
            raise ValueError("this WebSocket was already accepted")
        if tags is None:
            tags = ()
        elif isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
            raise TypeError("tags must be a list of str")
        tags = tuple(tags)
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags per WebSocket, got {len(tags)}")
        for tag in tags:
            if not isinstance(tag, str):
                raise TypeError(f"tags must be str, not {type(tag).__name__}")
            if len(tag) > MAX_TAG_CHARS:
                raise ValueError(
                    f"a tag may have at most {MAX_TAG_CHARS} characters, got {len(tag)}"
                )
        sockets = self.of(host)
        if len(sockets.entries) >= MAX_SOCKETS_PER_OBJECT:
            raise ValueError(f"an object may have at most {MAX_SOCKETS_PER_OBJECT} WebSockets")
        sockets.add(ws._ws_id, tags, ws)
        self.send(WsAccepted(ws._ws_id, host.target, list(tags)))

    def get_web_sockets(self, host: Any, tag: Any = None) -> list[Any]:
        entries = self.of(host).entries.values()
        if tag is None:
            return [e.handle for e in entries]
        return [e.handle for e in entries if tag in e.tags]

    def get_tags(self, host: Any, ws: Any) -> list[str]:
        return list(self.of(host).entry_of(ws).tags)

    def set_auto_response(self, host: Any, pair: Any = None) -> None:
        sockets = self.of(host)
        if pair is not None:
            request = getattr(pair, "request", None)
            response = getattr(pair, "response", None)
            if not isinstance(request, str) or not isinstance(response, str):
                raise TypeError(
                    "expected WebSocketRequestResponsePair(request: str, response: str)"
                )
            if len(request) > MAX_AUTO_RESPONSE_CHARS or len(response) > MAX_AUTO_RESPONSE_CHARS:
                raise ValueError(
                    f"auto-response request and response may have at most {MAX_AUTO_RESPONSE_CHARS} characters"
                )
            if not request:
                raise ValueError("the auto-response request must not be empty")
            pair = WebSocketRequestResponsePair(request, response)
        sockets.auto_pair = pair
        self.send(sockets.options())

    def get_auto_response(self, host: Any) -> Any:
        return self.of(host).auto_pair

    def get_auto_response_timestamp(self, host: Any, ws: Any) -> Any:
        ms = self.of(host).entry_of(ws).auto_ms
        if ms is None:
            return None
        return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)

    def set_event_timeout(self, host: Any, ms: Any = None) -> None:
        if ms is not None:
            if isinstance(ms, bool) or not isinstance(ms, int):
                raise TypeError("the event timeout is an int of milliseconds (or None)")
            if ms < 0 or ms > MAX_EVENT_TIMEOUT_MS:
                raise ValueError(
                    f"the event timeout must be between 0 and {MAX_EVENT_TIMEOUT_MS} ms"
                )
        sockets = self.of(host)
        sockets.event_timeout_ms = ms or None
        self.send(sockets.options())

    def get_event_timeout(self, host: Any) -> Any:
        return self.of(host).event_timeout_ms

    # ------------------------------------------------------------------ output

    def queue_send(self, ws_id: int, data: bytes, text: bool) -> None:
        self._out.append((ws_id, data, text))
        self._schedule_flush()

    def queue_close(self, ws_id: int, code: int, reason: str) -> None:
        self._out.append(WsClose(ws_id, code, reason))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.worker.nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        self._flush_scheduled = False
        self.flush_output()

    def flush_output(self) -> None:
        """Hand every released send/close to the supervisor connection, in order."""
        out, self._out = self._out, []
        ids: list[int] = []
        data: bytes | None = None
        text = True
        for item in out:
            if type(item) is tuple:
                ws_id, payload, is_text = item
                if ids and payload is data and is_text == text:
                    ids.append(ws_id)
                    continue
                if ids:
                    self.send(WsSend(ids, data or b"", text))
                ids, data, text = [ws_id], payload, is_text
            else:
                if ids:
                    self.send(WsSend(ids, data or b"", text))
                    ids, data = [], None
                self.send(item)
        if ids:
            self.send(WsSend(ids, data or b"", text))

    # ------------------------------------------------------------------ supervisor messages

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, WsEvent):
            self._on_event(msg)
        elif isinstance(msg, (WsRestored, WsSynced)):
            slot = self._waiting.pop(msg.request_id, None)
            if slot is not None:
                slot[1] = msg
                if slot[2] is not None:
                    slot[2](msg)
                slot[0].set()
        elif isinstance(msg, WsAutoResponded):
            host = self.worker.catalog.get((msg.target.class_name, msg.target.id))
            sockets = getattr(host, "web_sockets", None) if host is not None else None
            if sockets is not None:
                entry = sockets.entries.get(msg.ws_id)
                if entry is not None:
                    entry.auto_ms = msg.time_ms
        else:
            self.worker.log(f"unexpected message {type(msg).__name__}")

    def _on_event(self, msg: WsEvent) -> None:
        """Queue a socket event on its object now (arrival order), reply when handled."""
        try:
            host = self.worker.host_for(msg.target)
            if getattr(host, "web_sockets", None) is None and not self.parked.get(host.target.id):
                self.parked[host.target.id] = 1  # the supervisor holds sockets: restore first
            host.submit(SocketEvent(self._handler(host, msg), msg.request_id, self))
        except Exception as exc:  # noqa: BLE001 - becomes the supervisor's error
            self.send(Reply(msg.request_id, False, error=error_to_fields(exc)))

    def _handler(self, host: Any, msg: WsEvent) -> Any:
        worker = self.worker

        async def deliver(instance: Any) -> None:
            sockets = self.of(host)
            entry = sockets.entries.get(msg.ws_id)
            if entry is None and msg.kind == "message":
                return  # the object closed this socket while the message travelled
            if entry is None:
                # No longer among the object's open sockets (it left the lot before
                # the restore): the handler still gets a handle, rebuilt from what
                # the supervisor sent with the event.
                record = msg.socket or WsSocket(msg.ws_id)
                entry = SocketEntry(msg.ws_id, tuple(record.tags), sockets)
                entry.attachment = record.attachment
                entry.auto_ms = record.auto_response_ms
                handle = WebSocket()
                handle._ws_id = msg.ws_id
                handle._runtime = sockets
                handle._entry = entry  # type: ignore[attr-defined]
                entry.handle = handle
                entry.open = False
            elif msg.kind != "message":
                if (
                    msg.socket is not None
                    and msg.socket.attachment is not None
                    and entry.attachment is None
                ):
                    entry.attachment = msg.socket.attachment
                sockets.remove(entry)
            worker.fault_point("during_socket_delivery", host)
            if msg.kind == "message":
                host.counters.ws_messages_in += 1
                name = "web_socket_message"
                args: tuple[Any, ...] = (msg.data.decode("utf-8") if msg.text else msg.data,)
            elif msg.kind == "close":
                name = "web_socket_close"
                args = (msg.code, msg.reason, msg.was_clean)
            else:
                name = "web_socket_error"
                args = (ConnectionError(msg.reason),)
            handler = getattr(instance, name, None)
            if handler is None:
                return
            timeout_ms = sockets.event_timeout_ms
            if timeout_ms:
                with trio.move_on_after(timeout_ms / 1000) as scope:
                    await handler(entry.handle, *args)
                if scope.cancelled_caught:
                    raise TimeoutError(
                        f"{name} exceeded the WebSocket event timeout of {timeout_ms} ms"
                    )
            else:
                await handler(entry.handle, *args)

        return deliver


__all__ = ["ObjectSockets", "SocketEntry", "SocketEvent", "SocketRegistry"]
