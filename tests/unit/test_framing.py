"""`FramedConnection` over a real socketpair: frames leave in send order whoever writes
them (the per-pass flusher, the writer task on a full socket buffer, `flush_now`),
and the reader reassembles frames split across reads."""

import socket
import threading
import time

import trio
import trio.lowlevel
import trio.testing

from stateroom._framing import READ_CHUNK, FramedConnection
from stateroom._protocol import Committed, FrameReader, LoadDeployment, encode_frame


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


def _read_frames(sock: socket.socket, count: int, *, pause: float = 0.0, wait: float = 10) -> list:
    reader, out = FrameReader(), []
    sock.settimeout(wait)
    while len(out) < count:
        data = sock.recv(4096 if pause else 1 << 20)
        if not data:
            break
        out += reader.feed(data)
        if pause:
            time.sleep(pause)
    return out


async def test_frames_sent_between_scheduler_passes_arrive_without_a_writer_wakeup():
    stream, peer = _pair()
    conn = FramedConnection(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve_writer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(50):
            conn.send(Committed(i))
        await trio.lowlevel.checkpoint()  # one pass: the flusher writes before the poll
        got = _read_frames(peer, 50)
        assert [m.request_id for m in got] == list(range(50))
        assert not conn._writing, "the writer task took over although the kernel took all"
        nursery.cancel_scope.cancel()
    peer.close()
    stream.socket.close()


async def test_a_frame_sent_later_leaves_with_the_next_frame_in_one_write():
    stream, peer = _pair()
    conn = FramedConnection(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve_writer)
        await trio.testing.wait_all_tasks_blocked()
        conn.send_later(Committed(1))
        await trio.testing.wait_all_tasks_blocked()  # several passes, nothing to write
        peer.setblocking(False)
        try:
            early = peer.recv(4096)
        except BlockingIOError:
            early = b""
        assert early == b"", "a frame sent later was written on its own"
        conn.send(Committed(2))
        await trio.lowlevel.checkpoint()
        peer.setblocking(True)
        # Both frames in the bytes of one write, in send order.
        data = peer.recv(4096)
        assert data == encode_frame(Committed(1)) + encode_frame(Committed(2))
        nursery.cancel_scope.cancel()
    peer.close()
    stream.socket.close()


async def test_frames_keep_send_order_through_a_full_socket_buffer():
    stream, peer = _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = FramedConnection(stream)
    total = 40000
    got: list = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve_writer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(10000):  # far more than the socket buffers hold
            conn.send(Committed(i))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._writing, "the writer task did not take over on a full buffer"
        for i in range(10000, 20000):  # queued behind the blocked writer
            conn.send(Committed(i))
        await trio.lowlevel.checkpoint()
        # A slow peer: the kernel takes a few KiB at a time, so writes are partial.
        slow = threading.Thread(target=lambda: got.extend(_read_frames(peer, total, pause=0.0002)))
        slow.start()
        sent = 20000
        while sent < total:
            for _ in range(500):
                conn.send(Committed(sent))
                sent += 1
            await trio.sleep(0.001)
            if sent == 30000:
                conn.flush_now(timeout=30)  # a synchronous flush in the middle
        with trio.fail_after(30):
            while conn._out or conn._head_pos < len(conn._head):
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(slow.join, 30)
        nursery.cancel_scope.cancel()
    assert [m.request_id for m in got] == list(range(total))
    peer.close()
    stream.socket.close()


async def test_reader_reassembles_frames_larger_than_one_read_and_split_anywhere():
    stream, peer = _pair()
    conn = FramedConnection(stream)
    big = bytes(range(256)) * (3 * READ_CHUNK // 256 + 7)
    messages = [
        Committed(1),
        LoadDeployment(2, 1, big, {"bindings": {}}),
        Committed(3),
        LoadDeployment(4, 2, b"small", {}),
    ]
    wire = b"".join(encode_frame(m) for m in messages)
    got: list = []

    def write_in_odd_pieces() -> None:
        pos, step = 0, 1
        while pos < len(wire):
            peer.sendall(wire[pos : pos + step])
            pos += step
            step = step * 7 % 100003 + 1
        peer.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write_in_odd_pieces)
    writer.start()
    with trio.fail_after(30):
        await conn.serve_reader(got.append)
    await trio.to_thread.run_sync(writer.join, 10)
    assert got == messages
    assert conn.closed, "EOF leaves the connection closed"
    peer.close()
    stream.socket.close()


async def test_tasks_woken_by_a_message_run_before_the_next_read_is_handed_over():
    # A frame the peer sends as soon as it heard from us must not be handed over
    # before the task the previous message woke has run.
    for _ in range(20):  # trio runs a batch of ready tasks in either order
        stream, peer = _pair()
        conn = FramedConnection(stream)
        woken = trio.Event()
        order: list[str] = []

        async def woken_task(woken=woken, order=order) -> None:
            await woken.wait()
            order.append("task woken by A")

        def on_message(msg, woken=woken, order=order, peer=peer) -> None:
            if msg.request_id == 1:
                woken.set()
                # An instant peer: B is in the socket before the reader reads again.
                peer.sendall(encode_frame(Committed(2)))
                peer.shutdown(socket.SHUT_WR)
            else:
                order.append("B handed over")

        peer.sendall(encode_frame(Committed(1)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(woken_task)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                await conn.serve_reader(on_message)
        peer.close()
        stream.socket.close()
        assert order == ["task woken by A", "B handed over"]


async def test_a_frame_sent_from_another_instrument_leaves_before_the_loop_sleeps():
    # The worker's committer releases replies in its own `before_io_wait`, which
    # trio may call after the flusher's: the frame must not wait for the next pass.
    stream, peer = _pair()
    conn = FramedConnection(stream)

    class Releaser(trio.abc.Instrument):
        armed = False

        def before_io_wait(self, timeout: float) -> None:
            if self.armed and timeout > 0:  # the loop is about to sleep
                self.armed = False
                conn.send(Committed(7))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve_writer)
        await trio.testing.wait_all_tasks_blocked()  # the flusher is installed first
        releaser = Releaser()
        trio.lowlevel.add_instrument(releaser)
        releaser.armed = True
        # The loop now sleeps in its poll (this thread wait is its only business).
        got = await trio.to_thread.run_sync(lambda: _read_frames(peer, 1, wait=2))
        assert [m.request_id for m in got] == [7]
        trio.lowlevel.remove_instrument(releaser)
        nursery.cancel_scope.cancel()
    peer.close()
    stream.socket.close()
