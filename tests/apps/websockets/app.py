"""Test app for WebSockets: a room that speaks a tiny command language.

Upgrade `/room/<name>?tags=a,b&who=<name>` (through Default) or `/?...` on a stub:
the socket is accepted with those tags and `{"who": who}` as its attachment.
Messages: `echo:X` -> X back; `say:X` -> "<who>:X" to every socket; `tag:T:X` -> X
to the sockets tagged T; `tags` / `attachment` / `info` / `autots` -> JSON about this
socket or the room; `attach:<json>` sets the attachment; `close:CODE:REASON` closes
it; `auto` sets the auto-response ping -> pong; `sleep:S` sleeps S seconds.
The constructor counts itself in storage (`constructed`); closes and errors are
recorded in storage and broadcast as `closed:<code>:<was_clean>`.
"""

import json

import trio

from stateroom import (
    DurableObject,
    Response,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WorkerEntrypoint,
)


class Room(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.constructed = (ctx.storage.kv.get("constructed") or 0) + 1
        ctx.storage.kv.put("constructed", self.constructed)
        # Handles seen by the constructor, with their attachments (hibernation check).
        self.seen = {ws: ws.deserialize_attachment() for ws in ctx.get_web_sockets()}
        self.fresh = True

    async def fetch(self, request):
        if request.headers.get("upgrade", "").lower() != "websocket":
            return Response.json(await self.info())
        tags = [t for t in request.query.get("tags", "").split(",") if t]
        client, server = WebSocketPair()
        self.ctx.accept_web_socket(server, tags)
        server.serialize_attachment({"who": request.query.get("who", "anon")})
        if request.query.get("greet"):
            server.send("welcome")
        protocol = request.headers.get("sec-websocket-protocol")
        headers = {"sec-websocket-protocol": protocol.split(",")[0].strip()} if protocol else None
        return Response(status=101, web_socket=client, headers=headers)

    async def web_socket_message(self, ws, message):
        if self.fresh:
            # Which message woke this instance (an auto-response never does).
            self.fresh = False
            woken = self.ctx.storage.kv.get("woken_by") or []
            self.ctx.storage.kv.put(
                "woken_by", woken + [message[:40] if isinstance(message, str) else "<bytes>"]
            )
        if isinstance(message, bytes):
            ws.send(message)
            return
        cmd, _, rest = message.partition(":")
        if cmd == "echo":
            ws.send(rest)
        elif cmd == "say":
            who = ws.deserialize_attachment()["who"]
            for peer in self.ctx.get_web_sockets():
                peer.send(f"{who}:{rest}")
        elif cmd == "tag":
            tag, _, text = rest.partition(":")
            for peer in self.ctx.get_web_sockets(tag):
                peer.send(text)
        elif cmd == "tags":
            ws.send(json.dumps(self.ctx.get_tags(ws)))
        elif cmd == "attachment":
            ws.send(json.dumps(ws.deserialize_attachment()))
        elif cmd == "attach":
            try:
                ws.serialize_attachment(json.loads(rest))
            except (TypeError, ValueError) as exc:
                ws.send(f"refused:{type(exc).__name__}:{exc}")
            else:
                ws.send("attached")
        elif cmd == "big":
            try:
                ws.send("x" * int(rest))
            except ValueError as exc:
                ws.send(f"refused:{type(exc).__name__}:{exc}")
        elif cmd == "info":
            info = await self.info()
            info["seen_by_constructor"] = self.seen.get(ws)
            ws.send(json.dumps(info))
        elif cmd == "close":
            code, _, reason = rest.partition(":")
            ws.close(int(code), reason)
        elif cmd == "auto":
            self.ctx.set_web_socket_auto_response(WebSocketRequestResponsePair("ping", "pong"))
            ws.send("auto set")
        elif cmd == "autots":
            ts = self.ctx.get_web_socket_auto_response_timestamp(ws)
            ws.send(json.dumps(ts.isoformat() if ts else None))
        elif cmd == "timeout":
            self.ctx.set_hibernatable_web_socket_event_timeout(int(rest) if rest else None)
            ws.send(json.dumps(self.ctx.get_hibernatable_web_socket_event_timeout()))
        elif cmd == "sleep":
            await trio.sleep(float(rest))
            ws.send("slept")
        elif cmd == "write":
            await self.ctx.storage.put("written", rest)
            ws.send("wrote")
        else:
            ws.send("unknown:" + message)

    async def web_socket_close(self, ws, code, reason, was_clean):
        closes = self.ctx.storage.kv.get("closes") or []
        closes.append([code, reason, was_clean, ws.deserialize_attachment()])
        self.ctx.storage.kv.put("closes", closes)
        for peer in self.ctx.get_web_sockets():
            peer.send(f"closed:{code}:{was_clean}")

    async def web_socket_error(self, ws, error):
        errors = self.ctx.storage.kv.get("errors") or []
        errors.append([type(error).__name__, str(error)])
        self.ctx.storage.kv.put("errors", errors)

    async def info(self):
        return {
            "constructed": self.ctx.storage.kv.get("constructed"),
            "sockets": len(self.ctx.get_web_sockets()),
            "closes": self.ctx.storage.kv.get("closes") or [],
            "errors": self.ctx.storage.kv.get("errors") or [],
            "woken_by": self.ctx.storage.kv.get("woken_by") or [],
        }


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.url_path.strip("/").split("/")
        if parts[0] == "room" and len(parts) == 2:
            return await self.env.ROOM.get_by_name(parts[1]).fetch(request)
        if parts[0] == "plain":
            return Response("not a socket", status=403)
        return Response("not found", status=404)
