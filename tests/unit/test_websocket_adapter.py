"""The supervisor's WebSocket adapter (supervisor/websocket.py) on a socketpair, no processes.

A wsproto client plays the peer, so every frame is checked by an independent RFC 6455
implementation.
"""

from __future__ import annotations

import base64

import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

from stateroom._protocol import (
    HttpRequest,
    Target,
    WsAccepted,
    WsEvent,
    WsRestored,
    WsSend,
    WsSocket,
    decode_message,
    encode_frame,
)
from stateroom.supervisor.websocket import (
    Closed,
    ServerWebSocket,
    WriteBatcher,
    accept_headers,
    data_frame,
    handshake_error,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade(**overrides: str) -> HttpRequest:
    headers = {
        "host": "x",
        "upgrade": "websocket",
        "connection": "keep-alive, Upgrade",
        "sec-websocket-version": "13",
        "sec-websocket-key": KEY,
    }
    headers.update(overrides)
    method = headers.pop("method", "GET")
    return HttpRequest(method, "http://x/ws", [(k, v) for k, v in headers.items() if v], b"")


def test_handshake_checks_method_connection_version_and_key():
    assert handshake_error(upgrade()) is None
    assert "GET" in handshake_error(upgrade(method="POST"))
    assert "Connection" in handshake_error(upgrade(connection="keep-alive"))
    assert "Version" in handshake_error(upgrade(**{"sec-websocket-version": "8"}))
    assert "Key" in handshake_error(upgrade(**{"sec-websocket-key": ""}))
    assert "Key" in handshake_error(upgrade(**{"sec-websocket-key": "bm90IDE2IGJ5dGVz"}))


def test_accept_headers_carry_the_accept_token_and_the_apps_own_headers():
    headers = dict(
        accept_headers(
            upgrade(), [("Sec-WebSocket-Protocol", "chat"), ("Connection", "close"), ("x-a", "1")]
        )
    )
    assert headers["sec-websocket-accept"] == generate_accept_token(KEY.encode()).decode()
    assert headers["upgrade"] == "websocket" and headers["connection"] == "Upgrade"
    assert headers["Sec-WebSocket-Protocol"] == "chat" and headers["x-a"] == "1"
    assert "Connection" not in headers  # the handshake owns it


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_data_frames_parse_on_a_standard_client_at_every_length_boundary(size):
    client = Connection(ConnectionType.CLIENT)
    payload = bytes(range(256)) * (size // 256 + 1)
    client.receive_data(
        data_frame(payload[:size], text=False) + data_frame("é".encode(), text=True)
    )
    events = list(client.events())
    assert isinstance(events[0], BytesMessage) and events[0].data == payload[:size]
    assert isinstance(events[1], TextMessage) and events[1].data == "é"


class Peer:
    """The client end of a socketpair, speaking wsproto."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = Connection(ConnectionType.CLIENT)

    async def send(self, event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self):
        with trio.fail_after(5):
            while True:
                for event in self.ws.events():
                    return event
                self.ws.receive_data((await self.stream.receive_some(65536)) or None)


async def pair(nursery, max_message_bytes: int = 1 << 20) -> tuple[ServerWebSocket, Peer]:
    a, b = trio.socket.socketpair()
    server = ServerWebSocket(
        trio.SocketStream(a),
        nursery,
        batcher=WriteBatcher(nursery),
        max_message_bytes=max_message_bytes,
        max_buffered_bytes=1 << 22,
    )
    return server, Peer(trio.SocketStream(b))


async def test_messages_fragments_pings_and_a_clean_close():
    async with trio.open_nursery() as nursery:
        server, peer = await pair(nursery)
        await peer.send(Message(data="hel", message_finished=False))
        await peer.send(Message(data="lo", message_finished=True))
        got = await server.receive()
        assert got.data == b"hello" and got.text
        await peer.send(Ping(payload=b"p"))
        await peer.send(Message(data=b"\x00\x01"))
        got = await server.receive()
        assert got.data == b"\x00\x01" and not got.text
        assert await peer.next_event() == Pong(payload=b"p")
        server.send_frame(data_frame(b"one", True))
        server.send_frame(data_frame(b"two", True))
        assert (await peer.next_event()).data == "one"
        assert (await peer.next_event()).data == "two"
        await peer.send(CloseConnection(code=4001, reason="bye"))
        closed = await server.receive()
        assert closed == Closed(4001, "bye", was_clean=True)
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection) and answer.code == 4001
        await server.aclose()


async def test_a_dropped_connection_is_1006_and_not_clean():
    async with trio.open_nursery() as nursery:
        server, peer = await pair(nursery)
        await peer.stream.aclose()
        assert await server.receive() == Closed(1006, "", was_clean=False)
        await server.aclose()


async def test_a_message_over_the_limit_closes_with_1009_before_it_is_buffered():
    async with trio.open_nursery() as nursery:
        server, peer = await pair(nursery, max_message_bytes=1000)
        await peer.send(Message(data=b"x" * 1000))
        assert (await server.receive()).data == b"x" * 1000
        await peer.send(Message(data=b"y" * 600, message_finished=False))
        await peer.send(Message(data=b"y" * 600, message_finished=True))
        closed = await server.receive()
        assert closed.code == 1009 and not closed.was_clean and "1000" in closed.error
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection) and answer.code == 1009
        await server.aclose()


async def test_invalid_utf8_is_a_protocol_error_closed_with_1007():
    async with trio.open_nursery() as nursery:
        server, peer = await pair(nursery)
        # A masked text frame whose payload is not UTF-8 (mask of zeros keeps it readable).
        await peer.stream.send_all(bytes([0x81, 0x80 | 2, 0, 0, 0, 0]) + b"\xff\xfe")
        closed = await server.receive()
        assert closed.code == 1007 and closed.error
        await server.aclose()


async def test_server_close_waits_for_the_peers_answer_and_sends_queued_frames_first():
    async with trio.open_nursery() as nursery:
        server, peer = await pair(nursery)
        server.send_frame(data_frame(b"last words", True))
        server.close(1001, "going away")
        assert (await peer.next_event()).data == "last words"
        close = await peer.next_event()
        assert isinstance(close, CloseConnection) and close.code == 1001
        server.send_frame(data_frame(b"dropped", True))  # after our close: not sent
        await peer.send(close.response())
        assert await server.receive() == Closed(1001, "going away", was_clean=True, local=True)
        await server.aclose()


def test_socket_messages_round_trip_the_wire_protocol():
    target = Target("Room", "ab" * 32, "lobby")
    for msg in (
        WsAccepted(7, target, ["a", "b"]),
        WsSend([1, 2, 3], "é".encode(), True),
        WsEvent(
            9,
            target,
            7,
            "close",
            code=1006,
            reason="",
            was_clean=False,
            socket=WsSocket(7, ["a"], b"\x01", 5),
        ),
        WsRestored(3, [WsSocket(7, ["t"], None, None)], "ping", "pong", 100),
    ):
        assert decode_message(encode_frame(msg)[4:]) == msg
