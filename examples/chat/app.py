"""Chat rooms with hibernating WebSockets: one `ChatRoom` object per room name.

    stateroom dev examples/chat/stateroom.toml      # then open http://127.0.0.1:8787/

`Default` serves the page at `/` and routes `/rooms/<room>/ws` (the WebSocket) and
`/rooms/<room>/history` to the room's object. A room keeps its last messages in
its SQLite database and every member in a parked WebSocket whose attachment holds
the member's name. Between messages the room hibernates: its instance is dropped
and its sockets stay open in the supervisor; the next message re-creates it (the
constructor runs again) and `ctx.get_web_sockets()` still returns every member.
The page's heartbeat ("ping") is answered by the supervisor's auto-response, so it
never wakes a sleeping room.
"""

from __future__ import annotations

import json
import re
import time

from stateroom import (
    DurableObject,
    Response,
    WebSocketPair,
    WebSocketRequestResponsePair,
    WorkerEntrypoint,
)

HISTORY = 50
MAX_TEXT = 2000
ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def now_ms() -> int:
    return int(time.time() * 1000)


class ChatRoom(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,"
            " text TEXT NOT NULL, at INTEGER NOT NULL)"
        )
        # Heartbeats are answered by the runtime without waking this object.
        ctx.set_web_socket_auto_response(WebSocketRequestResponsePair("ping", "pong"))

    # ------------------------------------------------------------------ HTTP

    async def fetch(self, request):
        if request.headers.get("upgrade", "").lower() != "websocket":
            return Response.json({"messages": self.history(), "online": self.online()})
        name = " ".join((request.query.get("name") or "").split())[:32] or "anonymous"
        client, server = WebSocketPair()
        self.ctx.accept_web_socket(server, ["member"])
        server.serialize_attachment({"name": name, "joined": now_ms()})
        server.send(
            json.dumps(
                {
                    "type": "welcome",
                    "name": name,
                    "history": self.history(),
                    "online": self.online(),
                }
            )
        )
        self.broadcast({"type": "joined", "name": name, "online": self.online()}, skip=server)
        return Response(status=101, web_socket=client)

    # ------------------------------------------------------------------ sockets

    async def web_socket_message(self, ws, message):
        if isinstance(message, bytes):
            return
        try:
            text = str(json.loads(message).get("text", "")).strip()[:MAX_TEXT]
        except (ValueError, AttributeError):
            return
        if not text:
            return
        name = ws.deserialize_attachment()["name"]
        at = now_ms()
        sql = self.ctx.storage.sql
        sql.exec("INSERT INTO messages (name, text, at) VALUES (?, ?, ?)", name, text, at)
        sql.exec("DELETE FROM messages WHERE id <= (SELECT max(id) FROM messages) - ?", HISTORY)
        # Released once the insert is durable (the output gate).
        self.broadcast({"type": "message", "name": name, "text": text, "at": at})

    async def web_socket_close(self, ws, code, reason, was_clean):
        name = ws.deserialize_attachment()["name"]
        self.broadcast({"type": "left", "name": name, "online": self.online()})

    async def web_socket_error(self, ws, error):
        await self.web_socket_close(ws, 1006, str(error), False)

    # ------------------------------------------------------------------ helpers

    def broadcast(self, event, skip=None):
        text = json.dumps(event)
        for peer in self.ctx.get_web_sockets():
            if peer != skip:
                peer.send(text)

    def online(self):
        return sorted(ws.deserialize_attachment()["name"] for ws in self.ctx.get_web_sockets())

    def history(self):
        rows = self.ctx.storage.sql.exec(
            "SELECT name, text, at FROM messages ORDER BY id DESC LIMIT ?", HISTORY
        ).to_array()
        return rows[::-1]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url_path
        if path in ("/", "/index.html"):
            return Response(PAGE, headers={"content-type": "text/html; charset=utf-8"})
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "rooms" and parts[2] in ("ws", "history"):
            if not ROOM_NAME.match(parts[1]):
                return Response("room names are 1-64 letters, digits, - or _", status=400)
            return await self.env.ROOMS.get_by_name(parts[1]).fetch(request)
        return Response("not found", status=404)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stateroom chat</title>
<link rel="icon" href="data:,">
<style>
  :root { font: 15px/1.4 system-ui, sans-serif; color: #1d2430; background: #f3f5f8; }
  body { margin: 0; display: flex; justify-content: center; }
  main { width: min(720px, 100vw); height: 100vh; display: flex; flex-direction: column;
         background: #fff; box-shadow: 0 0 24px rgba(0,0,0,.08); }
  header { padding: 12px 16px; border-bottom: 1px solid #e3e7ee; display: flex; gap: 8px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0 12px 0 0; }
  input, button { font: inherit; padding: 6px 10px; border: 1px solid #c9d0db; border-radius: 6px; }
  button { background: #2f6fde; color: #fff; border-color: #2f6fde; cursor: pointer; }
  button:disabled { background: #9db5e6; border-color: #9db5e6; cursor: default; }
  #status { margin-left: auto; font-size: 13px; color: #6b7687; }
  #status.connected { color: #1f8a4c; }
  #online { padding: 6px 16px; font-size: 13px; color: #6b7687; border-bottom: 1px solid #eef1f5; }
  #log { list-style: none; margin: 0; padding: 12px 16px; flex: 1; overflow-y: auto; }
  #log li { margin: 4px 0; }
  #log li.notice { color: #6b7687; font-style: italic; }
  #log .who { font-weight: 600; margin-right: 6px; }
  #log .at { color: #9aa3b2; font-size: 12px; margin-right: 6px; }
  form#composer { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid #e3e7ee; }
  form#composer input { flex: 1; }
</style>
</head>
<body>
<main>
  <header>
    <h1>Stateroom chat</h1>
    <input id="room" placeholder="room" size="12" aria-label="room">
    <input id="name" placeholder="your name" size="14" aria-label="name">
    <button id="join" type="button">Join</button>
    <span id="status">not connected</span>
  </header>
  <div id="online"></div>
  <ul id="log" aria-live="polite"></ul>
  <form id="composer">
    <input id="text" placeholder="Say something" autocomplete="off" maxlength="2000" disabled
           aria-label="message">
    <button id="send" disabled>Send</button>
  </form>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  $("room").value = params.get("room") || "lobby";
  $("name").value = params.get("name") || "";
  let ws = null, heartbeat = null, retry = 500, wanted = false;

  function line(html, cls) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    li.innerHTML = html;
    $("log").appendChild(li);
    li.scrollIntoView({block: "end"});
  }
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  const time = (ms) => new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  function say(m) {
    line(`<span class="at">${time(m.at)}</span><span class="who">${esc(m.name)}:</span><span class="text">${esc(m.text)}</span>`);
  }
  function setOnline(names) { $("online").textContent = names.length ? "Online: " + names.join(", ") : ""; }
  function setStatus(text, ok) {
    $("status").textContent = text;
    $("status").className = ok ? "connected" : "";
    $("text").disabled = $("send").disabled = !ok;
  }

  function connect() {
    const room = $("room").value.trim() || "lobby";
    const name = $("name").value.trim() || "anonymous";
    history.replaceState(null, "", `?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/rooms/${encodeURIComponent(room)}/ws?name=${encodeURIComponent(name)}`);
    setStatus("connecting…", false);
    ws.onopen = () => {
      retry = 500;
      setStatus(`connected to ${room}`, true);
      heartbeat = setInterval(() => ws.readyState === 1 && ws.send("ping"), 20000);
      $("text").focus();
    };
    ws.onmessage = (e) => {
      if (e.data === "pong") return;
      const m = JSON.parse(e.data);
      if (m.type === "welcome") { $("log").innerHTML = ""; m.history.forEach(say); setOnline(m.online); }
      else if (m.type === "message") say(m);
      else if (m.type === "joined") { line(`${esc(m.name)} joined`, "notice"); setOnline(m.online); }
      else if (m.type === "left") { line(`${esc(m.name)} left`, "notice"); setOnline(m.online); }
    };
    ws.onclose = () => {
      clearInterval(heartbeat);
      setStatus("disconnected", false);
      if (wanted) { setTimeout(connect, retry); retry = Math.min(retry * 2, 10000); }
    };
  }

  $("join").onclick = () => { wanted = true; if (ws) { ws.onclose = null; ws.close(); } connect(); };
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (text && ws && ws.readyState === 1) { ws.send(JSON.stringify({text})); $("text").value = ""; }
  };
  if (params.get("room") && params.get("name")) { wanted = true; connect(); }
})();
</script>
</body>
</html>
"""
