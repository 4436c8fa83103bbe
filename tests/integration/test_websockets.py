"""WebSockets and hibernation (SPEC §7), observed from outside a real runtime.

The app (`tests/apps/websockets`) is a room that speaks a small command language;
see its docstring. Clients are trio-websocket (what the SDK uses) and, where a test
needs to misbehave on the wire, a raw wsproto client.
"""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.conftest import APPS

APP = str(APPS / "websockets" / "stateroom.toml")


def ws_url(rt, path: str) -> str:
    return rt.url.replace("http://", "ws://") + path


async def exchange(ws, text: str) -> str:
    await ws.send_message(text)
    with trio.fail_after(15):
        return await ws.get_message()


async def gauges(rt) -> tuple[int, int]:
    """(DurableObject instances in all workers, sockets parked in the supervisor)."""
    procs = await rt.processes()
    active = sum(p["objects_active"] for p in procs if p["role"] == "worker")
    parked = next(p["sockets_parked"] for p in procs if p["role"] == "supervisor")
    return active, parked


async def wait_gauges(rt, predicate, what: str) -> tuple[int, int]:
    seen = None
    try:
        with trio.fail_after(30):
            while True:
                seen = await gauges(rt)
                if predicate(*seen):
                    return seen
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(
            f"waiting for {what}: last (objects_active, sockets_parked) = {seen}"
        ) from None


async def room_info(rt, name: str) -> dict:
    response = await rt.namespace("ROOM").get_by_name(name).fetch("/")
    return await response.json()


async def wait_info(rt, name: str, predicate, what: str) -> dict:
    info = None
    try:
        with trio.fail_after(30):
            while True:
                info = await room_info(rt, name)
                if predicate(info):
                    return info
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"room {name}: waiting for {what}; last info {info}") from None


async def expect_close(ws) -> tuple[int, str]:
    """Read until the server closes; returns (code, reason) the client saw."""
    with trio.fail_after(15):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code, exc.reason.reason or ""


class RawClient:
    """A wsproto client on a bare TCP stream: it can drop the connection without a close."""

    def __init__(self, stream: trio.SocketStream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn

    @classmethod
    async def connect(cls, rt, path: str, extra_headers=()) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", rt.port)
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(
            conn.send(Request(host="127.0.0.1", target=path, extra_headers=list(extra_headers)))
        )
        client = cls(stream, conn)
        event = await client.next_event()
        if not isinstance(event, AcceptConnection):
            raise AssertionError(f"handshake for {path} not accepted: {event!r}")
        return client

    async def next_event(self):
        with trio.fail_after(15):
            while True:
                for event in self.conn.events():
                    return event
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data or None)

    async def send_text(self, text: str) -> None:
        from wsproto.events import Message

        await self.stream.send_all(self.conn.send(Message(data=text)))


# ---------------------------------------------------------------------- accept & API


@pytest.mark.stateroom(config=APP, workers=2)
async def test_socket_through_default_echoes_and_knows_its_tags_and_attachment(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/basics?who=ann&tags=red,blue")) as ws:
        assert await exchange(ws, "echo:hello") == "hello"
        assert json.loads(await exchange(ws, "tags")) == ["red", "blue"]
        assert json.loads(await exchange(ws, "attachment")) == {"who": "ann"}
        assert await exchange(ws, 'attach:{"who": "ann", "n": [1, 2]}') == "attached"
        assert json.loads(await exchange(ws, "attachment")) == {"who": "ann", "n": [1, 2]}
        await ws.send_message(b"\x00\x01binary")
        with trio.fail_after(15):
            assert await ws.get_message() == b"\x00\x01binary"
        _, parked = await gauges(rt)
        assert parked == 1


@pytest.mark.stateroom(config=APP, workers=2)
async def test_sdk_stub_opens_a_socket_straight_to_the_object(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("direct")
    async with stub.web_socket("/?who=sdk&greet=1") as ws:
        with trio.fail_after(15):
            assert await ws.get_message() == "welcome"  # sent before the 101 was out
        assert json.loads(await exchange(ws, "attachment")) == {"who": "sdk"}
    info = await wait_info(rt, "direct", lambda i: i["closes"], "the close to be recorded")
    assert info["closes"] == [[1000, "", True, {"who": "sdk"}]]


@pytest.mark.stateroom(config=APP, workers=2)
async def test_broadcast_reaches_twenty_clients_with_every_message_in_order_per_sender(
    stateroom_runtime,
):
    rt = stateroom_runtime
    clients, per_sender = 20, 5
    received: dict[int, list[str]] = {i: [] for i in range(clients)}
    async with trio.open_nursery() as nursery:
        sockets = []
        for i in range(clients):
            ws = await nursery.start(_open_client, ws_url(rt, f"/room/bcast?who=c{i}"))
            sockets.append(ws)
        _, parked = await gauges(rt)
        assert parked == clients

        async def talk(i: int) -> None:
            for k in range(per_sender):
                await sockets[i].send_message(f"say:{k}")

        async def listen(i: int) -> None:
            with trio.fail_after(60):
                while len(received[i]) < clients * per_sender:
                    received[i].append(await sockets[i].get_message())

        async with trio.open_nursery() as inner:
            for i in range(clients):
                inner.start_soon(listen, i)
            for i in range(clients):
                inner.start_soon(talk, i)
        for ws in sockets:
            await ws.aclose()
        nursery.cancel_scope.cancel()
    expected = {f"c{s}": [f"c{s}:{k}" for k in range(per_sender)] for s in range(clients)}
    for i, messages in received.items():
        by_sender: dict[str, list[str]] = {}
        for m in messages:
            by_sender.setdefault(m.split(":")[0], []).append(m)
        assert by_sender == expected, f"client c{i} saw {messages}"


async def _open_client(url: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


@pytest.mark.stateroom(config=APP, workers=2)
async def test_tags_select_which_sockets_a_message_reaches(stateroom_runtime):
    rt = stateroom_runtime
    base = ws_url(rt, "/room/tagged")
    async with (
        open_websocket_url(base + "?who=a&tags=team-red,all") as red,
        open_websocket_url(base + "?who=b&tags=team-blue,all") as blue,
        open_websocket_url(base + "?who=c") as untagged,
    ):
        await red.send_message("tag:team-blue:for blue")
        with trio.fail_after(15):
            assert await blue.get_message() == "for blue"
        await blue.send_message("tag:all:for all")
        with trio.fail_after(15):
            assert await red.get_message() == "for all"
            assert await blue.get_message() == "for all"
        # The untagged socket got neither message: its next message is its own echo.
        assert await exchange(untagged, "echo:only mine") == "only mine"
        # And red got nothing addressed to blue alone.
        assert await exchange(red, "echo:red next") == "red next"


@pytest.mark.stateroom(config=APP, workers=2)
async def test_accept_refuses_more_than_ten_tags_or_a_tag_over_256_chars(stateroom_runtime):
    rt = stateroom_runtime
    eleven = ",".join(f"t{i}" for i in range(11))
    for query, needle in ((f"tags={eleven}", "at most 10 tags"), ("tags=" + "x" * 257, "256")):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(ws_url(rt, f"/room/limits?{query}")):
                pass
        assert info.value.status_code == 500
        assert b"ValueError" in info.value.body and needle.encode() in info.value.body
    async with open_websocket_url(
        ws_url(rt, "/room/limits?tags=" + ",".join(["y" * 256] * 10))
    ) as ws:
        assert len(json.loads(await exchange(ws, "tags"))) == 10


@pytest.mark.stateroom(config=APP, workers=2)
async def test_attachment_over_16_kib_is_refused_and_the_old_one_kept(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/attach?who=zed")) as ws:
        reply = await exchange(ws, "attach:" + json.dumps("x" * 17000))
        assert reply.startswith("refused:ValueError:") and "16 KiB" in reply
        assert json.loads(await exchange(ws, "attachment")) == {"who": "zed"}


@pytest.mark.stateroom(config=APP, workers=2)
async def test_a_non_101_answer_is_sent_as_is_and_the_upgrade_refused(stateroom_runtime):
    rt = stateroom_runtime
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(ws_url(rt, "/plain")):
            pass
    assert info.value.status_code == 403 and info.value.body == b"not a socket"


@pytest.mark.stateroom(config=APP, workers=2)
async def test_sdk_socket_route_needs_the_token_and_a_valid_handshake(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("guarded")
    path = f"/_stateroom/v1/fetch/ROOM/id:{stub.id}/"
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(ws_url(rt, path)):
            pass
    assert info.value.status_code == 401
    import httpx

    async with httpx.AsyncClient(base_url=rt.url) as http:
        r = await http.get(
            "/room/guarded", headers={"upgrade": "websocket", "connection": "upgrade"}
        )
        assert r.status_code == 426 and "Sec-WebSocket-Version" in r.text
    _, parked = await gauges(rt)
    assert parked == 0


# ---------------------------------------------------------------------- closing


@pytest.mark.stateroom(config=APP, workers=2)
async def test_client_close_reaches_the_object_with_code_reason_and_attachment(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/closing?who=watcher")) as watcher:
        async with open_websocket_url(ws_url(rt, "/room/closing?who=leaver")) as leaver:
            assert await exchange(leaver, "echo:x") == "x"
            await leaver.aclose(code=4001, reason="bye now")
        with trio.fail_after(15):
            assert await watcher.get_message() == "closed:4001:True"
    info = await wait_info(rt, "closing", lambda i: len(i["closes"]) == 2, "both closes")
    assert info["closes"][0] == [4001, "bye now", True, {"who": "leaver"}]


@pytest.mark.stateroom(config=APP, workers=2)
async def test_abrupt_disconnect_reaches_the_object_as_1006_not_clean(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/abrupt?who=watcher")) as watcher:
        raw = await RawClient.connect(rt, "/room/abrupt?who=dropper")
        await raw.send_text("echo:hi")
        event = await raw.next_event()
        assert isinstance(event, TextMessage) and event.data == "hi"
        await raw.stream.aclose()  # no close frame
        with trio.fail_after(15):
            assert await watcher.get_message() == "closed:1006:False"
    info = await wait_info(rt, "abrupt", lambda i: len(i["closes"]) == 2, "both closes")
    assert info["closes"][0] == [1006, "", False, {"who": "dropper"}]


@pytest.mark.stateroom(config=APP, workers=2)
async def test_object_close_reaches_the_client_with_its_code_and_reason(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/kick?who=x")) as ws:
        await ws.send_message("close:4002:kicked")
        assert await expect_close(ws) == (4002, "kicked")
    await wait_gauges(rt, lambda active, parked: parked == 0, "the socket to leave the lot")
    info = await room_info(rt, "kick")
    assert info["closes"] == []  # the object closed it: no close event


@pytest.mark.stateroom(config=APP, workers=2, max_ws_message_bytes=1024)
async def test_message_over_the_limit_closes_the_socket_with_1009(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/big?who=x")) as ws:
        assert await exchange(ws, "echo:" + "a" * 1000) == "a" * 1000
        await ws.send_message("b" * 2000)
        code, _ = await expect_close(ws)
        assert code == 1009
    info = await wait_info(rt, "big", lambda i: i["errors"], "the error to be recorded")
    assert info["errors"][0][0] == "ConnectionError" and "1024" in info["errors"][0][1]
    async with open_websocket_url(ws_url(rt, "/room/big?who=y")) as ws:
        reply = await exchange(ws, "big:2000")
        assert reply.startswith("refused:ValueError:") and "1024" in reply


@pytest.mark.stateroom(config=APP, workers=2)
async def test_deleting_the_object_closes_its_sockets(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("doomed")
    async with stub.web_socket("/?who=x") as ws:
        assert await exchange(ws, "echo:x") == "x"
        await rt.client.delete_object("ROOM", str(stub.id))
        code, reason = await expect_close(ws)
        assert code == 1001 and "deleted" in reason
    await wait_gauges(rt, lambda active, parked: parked == 0, "the socket to leave the lot")


@pytest.mark.stateroom(config=APP, workers=2)
async def test_supervisor_shutdown_closes_sockets_with_1012(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/restart?who=x")) as ws:
        assert await exchange(ws, "echo:x") == "x"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.stop)
            code, _ = await expect_close(ws)
        assert code == 1012


# ---------------------------------------------------------------------- hibernation


@pytest.mark.stateroom(config=APP, workers=2, hibernate_after=1)
async def test_hibernation_frees_the_instance_while_its_sockets_stay_open(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("sleepy")
    async with (
        stub.web_socket("/?who=a&tags=t1") as a,
        stub.web_socket("/?who=b") as b,
        stub.web_socket("/?who=c") as c,
    ):
        first = json.loads(await exchange(a, "info"))
        assert first["constructed"] == 1 and first["sockets"] == 3
        await wait_gauges(rt, lambda active, parked: active >= 1, "the room to be reported active")
        await wait_gauges(
            rt,
            lambda active, parked: active == 0 and parked == 3,
            "the room to hibernate, sockets parked",
        )
        procs = await rt.processes()
        owner = next(
            p
            for p in procs
            if p["role"] == "worker" and int(str(stub.id)[:8], 16) % 256 in p["shards"]
        )
        assert owner["sockets_parked"] == 3 and owner["objects_active"] == 0
        assert sum(p["sockets_parked"] for p in procs if p["role"] == "worker") == 3
        woke = json.loads(await exchange(b, "info"))
        assert woke["constructed"] == 2, woke
        assert woke["sockets"] == 3
        assert woke["seen_by_constructor"] == {"who": "b"}  # handles rebuilt before the constructor
        assert json.loads(await exchange(a, "attachment")) == {"who": "a"}
        assert json.loads(await exchange(a, "tags")) == ["t1"]
        assert await exchange(c, "say:hi") == "c:hi"
        with trio.fail_after(15):
            assert await a.get_message() == "c:hi"
            assert await b.get_message() == "c:hi"


@pytest.mark.stateroom(config=APP, workers=2, hibernate_after=1)
async def test_auto_response_is_answered_while_hibernated_without_waking_the_object(
    stateroom_runtime,
):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/auto?who=a")) as ws:
        assert await exchange(ws, "auto") == "auto set"
        assert json.loads(await exchange(ws, "autots")) is None
        await wait_gauges(rt, lambda active, parked: active >= 1, "the room to be reported active")
        await wait_gauges(
            rt, lambda active, parked: active == 0 and parked == 1, "the room to hibernate"
        )
        for _ in range(3):
            assert await exchange(ws, "ping") == "pong"
        active, parked = await gauges(rt)
        assert (active, parked) == (0, 1)
        info = json.loads(await exchange(ws, "info"))
        assert info["constructed"] == 2
        assert info["woken_by"] == ["auto", "info"]  # the pings never reached the object
        assert json.loads(await exchange(ws, "autots")) is not None


@pytest.mark.stateroom(config=APP, workers=2)
async def test_sockets_survive_a_kill_of_the_owning_worker_and_the_next_message_is_handled(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("crashy")
    async with stub.web_socket("/?who=a") as a, stub.web_socket("/?who=b") as b:
        assert await exchange(a, "echo:before") == "before"
        killed = await rt.kill_worker(stub)
        assert killed not in await rt.worker_pids()
        _, parked = await gauges(rt)
        assert parked == 2
        assert await exchange(a, "echo:after") == "after"
        info = json.loads(await exchange(b, "info"))
        assert info["constructed"] == 2 and info["sockets"] == 2
        assert info["seen_by_constructor"] == {"who": "b"}
        assert await exchange(b, "say:still here") == "b:still here"
        with trio.fail_after(15):
            assert await a.get_message() == "b:still here"


# ---------------------------------------------------------------------- odds and ends


@pytest.mark.stateroom(config=APP, workers=2)
async def test_subprotocol_chosen_by_the_object_reaches_the_client(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(
        ws_url(rt, "/room/proto"), subprotocols=["chat.v2", "chat.v1"]
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert await exchange(ws, "echo:ok") == "ok"


@pytest.mark.stateroom(config=APP, workers=2)
async def test_event_timeout_cancels_a_slow_socket_handler(stateroom_runtime):
    rt = stateroom_runtime
    async with open_websocket_url(ws_url(rt, "/room/slow?who=s")) as ws:
        assert await exchange(ws, "sleep:0") == "slept"
        assert json.loads(await exchange(ws, "timeout:200")) == 200
        await ws.send_message("sleep:30")
        # The handler is cancelled after 200 ms: the next message is answered, not "slept".
        assert await exchange(ws, "echo:next") == "next"
        assert json.loads(await exchange(ws, "timeout:")) is None
        assert await exchange(ws, "sleep:0.3") == "slept"


@pytest.mark.stateroom(config=APP, workers=2, fault_injection=True)
async def test_crash_during_socket_delivery_keeps_the_socket_and_delivers_the_message(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("faulty")
    async with stub.web_socket("/?who=f") as ws:
        assert await exchange(ws, "echo:first") == "first"
        pid = next(
            p["pid"]
            for p in await rt.processes()
            if p["role"] == "worker" and int(str(stub.id)[:8], 16) % 256 in p["shards"]
        )
        await rt.inject("during_socket_delivery", stub)
        # The owning worker dies while delivering this message; the message had no
        # durable effect, so the supervisor hands it to the restarted worker.
        assert await exchange(ws, "echo:second") == "second"
        assert pid not in await rt.worker_pids()
        info = json.loads(await exchange(ws, "info"))
        assert info["constructed"] == 2 and info["sockets"] == 1


@pytest.mark.stateroom(config=APP, workers=2, hibernate_after=1)
async def test_a_close_wakes_a_hibernated_object_with_the_sockets_attachment(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("nightly")
    async with stub.web_socket("/?who=stayer") as stayer:
        async with stub.web_socket("/?who=leaver") as leaver:
            assert await exchange(leaver, "echo:x") == "x"
            await wait_gauges(
                rt, lambda active, parked: active >= 1, "the room to be reported active"
            )
            await wait_gauges(
                rt, lambda active, parked: active == 0 and parked == 2, "the room to hibernate"
            )
            await leaver.aclose(code=4005, reason="night")
        with trio.fail_after(15):
            assert await stayer.get_message() == "closed:4005:True"
        info = json.loads(await exchange(stayer, "info"))
    assert info["constructed"] == 2 and info["sockets"] == 1
    assert info["closes"] == [[4005, "night", True, {"who": "leaver"}]]


@pytest.mark.stateroom(config=APP, workers=2)
async def test_socket_messages_are_billed_as_ws_messages_in(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("billed")
    async with stub.web_socket("/?who=b") as ws:
        for i in range(3):
            assert await exchange(ws, f"echo:{i}") == str(i)
        _, parked = await gauges(rt)
        assert parked == 1
        groups: list = []
        with trio.fail_after(30):
            while True:
                bill = await rt.client.billing(group_by="object")
                groups = [g for g in bill["groups"] if g["object"] == str(stub.id)]
                if groups and groups[0]["ws_messages_in"] >= 3:
                    break
                await trio.sleep(0.2)
    assert groups[0]["ws_messages_in"] == 3, groups
