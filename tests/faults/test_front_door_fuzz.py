"""The front door under hostile input (SPEC §9, §14): fuzzed HTTP and WebSocket bytes.

One real supervisor (the WebSocket test app deployed, headers due within 1 s, idle
keep-alive 2 s, bodies up to 64 KiB, messages up to 4 KiB) takes hypothesis-generated
garbage: random bytes, mangled request lines, headers and bodies, huge header
blocks, slow clients, and invalid WebSocket frames after a real handshake. After
every example the supervisor is alive, answers a health check at once, and a
WebSocket client parked since the start still echoes. Every answer is a clean
4xx (or 501 / 505 for an unknown transfer coding or HTTP version) or a WebSocket close with a protocol code.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stateroom
from tests.conftest import APPS

WS_APP = str(APPS / "websockets" / "stateroom.toml")
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
MAX_BODY = 65536  # the deploy of the test app must fit
MAX_WS_MESSAGE = 4096
FUZZ = settings(
    max_examples=int(os.environ.get("STATEROOM_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


@dataclass
class Server:
    host: str
    port: int
    token: str
    process: subprocess.Popen
    # A WebSocket client connected for the whole module (see ParkedClient).
    keeper: ParkedClient | None = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    token = "fuzz-" + os.urandom(6).hex()
    env = dict(
        os.environ,
        STATEROOM_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        STATEROOM_IDLE_TIMEOUT=str(IDLE_TIMEOUT),
    )
    log = open(data / "supervisor.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stateroom.supervisor",
            "--data",
            str(data / "d"),
            "--port",
            "0",
            "--workers",
            "1",
            "--token",
            token,
            "--max-body-bytes",
            str(MAX_BODY),
            "--max-ws-message-bytes",
            str(MAX_WS_MESSAGE),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    url = _listening_url(process)
    with stateroom.connect_sync(url, token) as client:
        client.deploy(WS_APP)
    host, port = url.split("//")[1].split(":")
    srv = Server(host, int(port), token, process)
    srv.keeper = ParkedClient(srv)
    yield srv
    srv.keeper.close()
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _listening_url(process: subprocess.Popen) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            text = line.decode(errors="replace")
            if text.startswith("stateroom listening on "):
                found.append(text.split(" on ", 1)[1].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    assert found, "the supervisor did not start"
    return found[0]


# ---------------------------------------------------------------------------- plumbing


def exchange(srv: Server, data: bytes, *, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send `data` on a fresh connection, then read until the server closes."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        return _read_all(s, timeout)


def _read_all(s: socket.socket, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def statuses(response: bytes) -> list[int]:
    """Status codes of the HTTP responses in `response`, in order."""
    out = []
    for line in response.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and len(line) >= 12 and line[9:12].isdigit():
            out.append(int(line[9:12]))
    return out


def assert_healthy(srv: Server) -> None:
    assert srv.process.poll() is None, "the supervisor died"
    t0 = time.monotonic()
    response = exchange(srv, b"GET /_stateroom/health HTTP/1.1\r\nhost: x\r\n\r\n", timeout=5)
    assert statuses(response)[:1] == [200], response[:200]
    assert time.monotonic() - t0 < 3, "the health check was slow"


def assert_clean_http(response: bytes) -> None:
    codes = statuses(response)
    if response:
        assert response.startswith(b"HTTP/1.1 "), response[:100]
    for code in codes:
        # 501 (unknown transfer coding) and 505 (unknown HTTP version) are the
        # protocol's own answers to a client's request, not server failures.
        assert code < 500 or code in (501, 505), (
            f"server error {code} for client garbage: {response[:300]!r}"
        )


# ---------------------------------------------------------------------------- WebSockets


def ws_handshake(srv: Server, path: str) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            f"sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse the (unmasked) frames the server sent; a trailing partial frame is dropped."""
    frames, pos = [], 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n, pos2 = b1 & 0x7F, pos + 2
        if n == 126:
            if len(data) - pos2 < 2:
                break
            (n,) = struct.unpack_from("!H", data, pos2)
            pos2 += 2
        elif n == 127:
            if len(data) - pos2 < 8:
                break
            (n,) = struct.unpack_from("!Q", data, pos2)
            pos2 += 8
        if len(data) - pos2 < n:
            break
        frames.append((b0 & 0x0F, data[pos2 : pos2 + n]))
        pos = pos2 + n
    return frames


class ParkedClient:
    """A WebSocket client connected for the whole module: it must keep working."""

    def __init__(self, srv: Server) -> None:
        self.sock = ws_handshake(srv, "/room/keeper?who=keeper")

    def echo(self, text: str) -> None:
        self.sock.sendall(frame(1, f"echo:{text}".encode()))
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.sock.settimeout(deadline - time.monotonic())
            data += self.sock.recv(65536)
            if (1, text.encode()) in server_frames(data):
                return
        raise AssertionError(f"the parked client got no echo of {text!r}: {data!r}")

    def close(self) -> None:
        try:
            self.sock.sendall(frame(8, struct.pack("!H", 1000)))
        except OSError:
            pass
        self.sock.close()


# ---------------------------------------------------------------------------- strategies

methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]
) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=8)
targets = st.sampled_from(
    [
        "/",
        "/fuzz",
        "/room/fuzz",
        "/_stateroom/health",
        "/_stateroom/v1/processes",
        "*",
        "http://x/fuzz",
        "/%ff%00",
        "//",
        "/plain",
        "/_stateroom/v1/objects/ROOM/zz",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "", "HTTP/9"])
header_names = st.sampled_from(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "authorization",
        "sec-websocket-key",
        "sec-websocket-version",
        "expect",
        "cookie",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), min_size=0, max_size=12)
header_values = st.sampled_from(
    [
        "0",
        "5",
        "-1",
        "99999999999999999999",
        "chunked",
        "gzip, chunked",
        "websocket",
        "Upgrade",
        "close",
        "keep-alive",
        "100-continue",
        "Bearer nope",
        "13",
        "x" * 300,
    ]
) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=30)
chunked_bodies = st.lists(
    st.tuples(st.binary(max_size=64), st.sampled_from(["ok", "bad-size", "no-crlf", "huge"])),
    max_size=4,
)


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", errors="replace")


@st.composite
def requests(draw) -> bytes:
    line = _latin1(f"{draw(methods)} {draw(targets)} {draw(versions)}")
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    raw = [line] + [_latin1(f"{k}: {v}") for k, v in headers]
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    body = b""
    if draw(st.booleans()):
        for data, how in draw(chunked_bodies):
            size = b"%x" % len(data)
            if how == "bad-size":
                size = b"zz"
            elif how == "huge":
                size = b"ffffffffffffffffffff"
            body += size + b"\r\n" + data + (b"" if how == "no-crlf" else b"\r\n")
        body += draw(st.sampled_from([b"0\r\n\r\n", b"", b"0\r\n"]))
    else:
        body = draw(st.binary(max_size=200))
    return sep.join(raw) + sep + sep + body


# ---------------------------------------------------------------------------- HTTP tests


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_never_break_the_supervisor(server, data):
    assert_clean_http(exchange(server, data))
    assert_healthy(server)


@FUZZ
@given(data=requests())
def test_mangled_requests_get_clean_client_errors(server, data):
    assert_clean_http(exchange(server, data))
    assert_healthy(server)


@pytest.mark.parametrize("size", [70_000, 200_000])
def test_a_huge_header_block_gets_431(server, size):
    response = exchange(server, b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size + b"\r\n\r\n")
    assert statuses(response) == [431], response[:200]
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(size // 100))
    response = exchange(server, b"GET / HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert statuses(response) == [431], response[:200]
    assert_healthy(server)


def test_a_body_over_the_limit_gets_413_and_a_bad_length_400(server):
    response = exchange(
        server, b"POST /fuzz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY + 1)
    )
    assert statuses(response) == [413]
    chunks = b"".join(b"4000\r\n" + b"a" * 0x4000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    response = exchange(
        server, b"POST /fuzz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunks
    )
    assert statuses(response) == [413]
    response = exchange(server, b"POST /fuzz HTTP/1.1\r\nhost: x\r\ncontent-length: ten\r\n\r\n")
    assert statuses(response) == [400]
    assert_healthy(server)


def test_slow_clients_time_out_with_408_while_others_are_served(server):
    slow = []
    try:
        for _ in range(20):
            s = socket.create_connection((server.host, server.port), timeout=10)
            s.sendall(b"GET /fuzz HTTP/1.1\r\nhost: x\r\n")  # headers never finish
            slow.append(s)
        t0 = time.monotonic()
        # Others are served at once meanwhile.
        assert_healthy(server)
        response = _read_all(slow[0], HEADER_TIMEOUT + 5)
        assert statuses(response) == [408], response
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
        # A dripping client does not reset the clock byte by byte.
        s = socket.create_connection((server.host, server.port), timeout=10)
        slow.append(s)
        t0 = time.monotonic()
        try:
            for byte in b"GET /fuzz HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100:
                s.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
        assert statuses(_read_all(s, 5)) in ([408], [])
    finally:
        for s in slow:
            s.close()
    assert_healthy(server)


def test_an_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(b"GET /_stateroom/health HTTP/1.1\r\nhost: x\r\n\r\n")
        t0 = time.monotonic()
        data = _read_all(s, IDLE_TIMEOUT + 5)
        assert statuses(data) == [200]
        assert IDLE_TIMEOUT - 0.5 <= time.monotonic() - t0 < IDLE_TIMEOUT + 3


# ---------------------------------------------------------------------------- WebSocket tests

opcodes = st.sampled_from([0, 1, 2, 3, 7, 8, 9, 10, 11, 15])
payloads = st.binary(max_size=200) | st.sampled_from(
    [b"\xff\xfe", b"\xc3", "caf\u00e9".encode(), b"echo:ok", b"\x03\xe8", b"\x03", b"x" * 5000]
)


@st.composite
def ws_garbage(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=300))
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        out += frame(
            draw(opcodes),
            draw(payloads),
            fin=draw(st.booleans()),
            rsv=draw(st.sampled_from([0, 0, 0, 1, 4, 7])),
            mask=draw(st.sampled_from([True, True, False])),
        )
    return out


@FUZZ
@given(data=ws_garbage())
def test_invalid_websocket_frames_get_a_protocol_close_and_others_are_unaffected(server, data):
    s = ws_handshake(server, "/room/fuzz?who=fuzz")
    try:
        try:
            s.sendall(data)
            s.sendall(frame(8, struct.pack("!H", 1000)))  # then close, if still in sync
        except OSError:
            pass
        received = _read_all(s, 1.0)
    finally:
        s.close()
    for opcode, payload in server_frames(received):
        if opcode == 8 and len(payload) >= 2:
            (code,) = struct.unpack("!H", payload[:2])
            assert code in (1000, 1002, 1003, 1007, 1009), f"close code {code} for {data[:60]!r}"
    assert_healthy(server)
    server.keeper.echo(f"after-{len(data)}")


@pytest.mark.parametrize(
    ("what", "data", "code"),
    [
        ("an unmasked client frame", frame(1, b"echo:x", mask=False), 1002),
        ("reserved bits set", frame(1, b"echo:x", rsv=4), 1002),
        ("an unknown opcode", frame(3, b"x"), 1002),
        ("a fragmented ping", frame(9, b"x", fin=False), 1002),
        ("text that is not UTF-8", frame(1, b"\xff\xfe"), 1007),
        ("a message over the limit", frame(2, b"x" * (MAX_WS_MESSAGE + 1)), 1009),
    ],
)
def test_each_kind_of_bad_frame_gets_its_close_code(server, what, data, code):
    s = ws_handshake(server, "/room/fuzz?who=fuzz")
    try:
        s.sendall(data)
        received = _read_all(s, 5)
    finally:
        s.close()
    closes = [p for op, p in server_frames(received) if op == 8]
    assert closes, f"{what}: no close frame in {received[:100]!r}"
    assert struct.unpack("!H", closes[0][:2])[0] == code, f"{what}: {closes[0]!r}"
    server.keeper.echo(what.replace(" ", "-"))


# ---------------------------------------------------------------------------- the parser's rules

HEALTH = b"GET /_stateroom/health HTTP/1.1\r\nhost: x\r\n\r\n"


def response_statuses(data: bytes) -> list[int]:
    """Status codes of the back-to-back responses in `data`, read by their framing."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), head[:100]
        out.append(int(head[9:12]))
        length = [
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ]
        data = data[int(length[0].split(b":")[1]) :]
    return out


@pytest.mark.parametrize(
    ("what", "request_bytes", "status"),
    [
        # llhttp (httptools) is stricter than h11 was on these.
        ("bare LF line ends", b"GET /_stateroom/health HTTP/1.1\nhost: x\n\n", 400),
        ("an unknown method", b"BREW /fuzz HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        ("a lowercase method", b"get /_stateroom/health HTTP/1.1\r\nhost: x\r\n\r\n", 400),
        (
            "a control character in a value",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n",
            400,
        ),
        ("an obsolete line fold", b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\r\n b\r\n\r\n", 400),
        (
            "Content-Length twice",
            b"POST /fuzz HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na",
            400,
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"POST /fuzz HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n"
            b"transfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            400,
        ),
        ("an unknown HTTP version", b"GET / HTTP/9.9\r\nhost: x\r\n\r\n", 505),
        # What llhttp lets through, the front door checks itself (as h11 did).
        ("HTTP/1.1 without Host", b"GET /_stateroom/health HTTP/1.1\r\n\r\n", 400),
        ("two Host headers", b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        ("HTTP/0.9", b"GET /_stateroom/health\r\n\r\n", 400),
        (
            "a transfer coding but chunked",
            b"POST /fuzz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "an absolute-form target",
            b"GET http://x/_stateroom/health HTTP/1.1\r\nhost: x\r\n\r\n",
            400,
        ),
    ],
)
def test_a_request_the_parser_refuses_gets_one_answer_and_the_connection_closes(
    server, what, request_bytes, status
):
    # The refusal ends the connection: the valid request pipelined after it is not served.
    response = exchange(server, request_bytes + HEALTH)
    assert response_statuses(response) == [status], f"{what}: {response[:300]!r}"
    assert_healthy(server)


def test_pipelined_requests_are_answered_in_order_then_a_bad_one_is_refused(server):
    bad = b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n"
    response = exchange(server, HEALTH + b"GET /fuzz HTTP/1.1\r\nhost: x\r\n\r\n" + HEALTH + bad)
    assert response_statuses(response) == [200, 404, 200, 400], response[:600]
    # HTTP/1.0 (keep-alive asked or not) and `Connection: close` end the connection
    # after their response: what follows is not served.
    for first in (
        b"GET /_stateroom/health HTTP/1.0\r\n\r\n",
        b"GET /_stateroom/health HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        b"GET /_stateroom/health HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, close\r\n\r\n",
    ):
        response = exchange(server, first + HEALTH)
        assert response_statuses(response) == [200], f"{first!r}: {response[:300]!r}"
        assert b"\r\nConnection: close\r\n" in response, response[:300]


def test_a_head_after_a_large_body_in_the_same_read_is_measured_only_from_its_start(server):
    # The second request's head begins near the end of the first read (after the first
    # request's body) and ends in the next one: it is small and must be served.
    body = b"a" * (65536 - 200)
    first = b"POST /fuzz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    second = b"GET /_stateroom/health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 4000 + b"\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(first + second[:150])
        time.sleep(0.2)  # let the server read the first part on its own
        s.sendall(second[150:])
        s.shutdown(socket.SHUT_WR)
        assert response_statuses(_read_all(s, 5)) == [404, 200]


def test_chunked_bodies_split_anywhere_are_read_and_trailers_ignored(server):
    request = (
        b"POST /fuzz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n" + HEALTH
    )
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        for i in range(0, len(request), 7):
            s.sendall(request[i : i + 7])
            time.sleep(0.005)
        s.shutdown(socket.SHUT_WR)
        assert response_statuses(_read_all(s, 5)) == [404, 200]
    assert_healthy(server)


def test_a_client_expecting_100_continue_gets_it_before_sending_the_body(server):
    # curl asks for `100 Continue` before a large body and waits a second without it.
    head = b"POST /fuzz HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(head)
        s.settimeout(2)
        interim = s.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello" + HEALTH)
        s.shutdown(socket.SHUT_WR)
        assert response_statuses(_read_all(s, 5)) == [404, 200]
    # A body already refused on its length gets the refusal, not an invitation.
    over = b"POST /fuzz HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n"
    response = exchange(server, over % (MAX_BODY + 1))
    assert statuses(response) == [413] and b"100 Continue" not in response
    # A body sent along with its head needs no invitation.
    response = exchange(server, head + b"hello")
    assert statuses(response) == [404] and b"100 Continue" not in response
    assert_healthy(server)
