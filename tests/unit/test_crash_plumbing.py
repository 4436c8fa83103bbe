"""Pieces of crash handling that need no runtime: `FramedConnection.flush_now`, the
CPU-limit wrapper `Metered`, commit propagation between `Pending` requests, and the
worker's fault table."""

import socket
import threading
import types

import pytest
import trio
import trio.lowlevel
import trio.testing

from stateroom._framing import FramedConnection
from stateroom._protocol import Committed, FrameReader, Target
from stateroom.supervisor.workers import Pending
from stateroom.worker.faults import FaultTable
from stateroom.worker.limits import CpuLimitExceeded, Metered, Watchdog


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


def _read_frames(sock: socket.socket, count: int) -> list:
    reader, out = FrameReader(), []
    sock.settimeout(5)
    while len(out) < count:
        out += reader.feed(sock.recv(1 << 20))
    return out


async def test_flush_now_hands_queued_frames_to_the_kernel_in_order():
    stream, peer = _pair()
    conn = FramedConnection(stream)
    for i in range(100):
        conn.send(Committed(i))
    conn.flush_now()  # no writer task ever ran
    assert [m.request_id for m in _read_frames(peer, 100)] == list(range(100))
    peer.close()


async def test_flush_now_continues_where_a_blocked_writer_stopped():
    stream, peer = _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = FramedConnection(stream)
    big = [Committed(i) for i in range(20000)]  # more than the socket buffers hold
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve_writer)
        for m in big[:10000]:
            conn.send(m)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for room
        for m in big[10000:]:
            conn.send(m)
        got = []
        reader = threading.Thread(target=lambda: got.extend(_read_frames(peer, len(big))))
        reader.start()
        conn.flush_now(timeout=30)  # blocks this thread until the kernel took it all
        assert not conn._out and conn._head_pos == len(conn._head), "flush_now gave up"
        reader.join(10)
        assert [m.request_id for m in got] == list(range(20000))
        nursery.cancel_scope.cancel()
    peer.close()


class _Host:
    def __init__(self):
        self.resets = []
        self.counters = types.SimpleNamespace(cpu_ms=0.0)

    def reset(self, reason):
        self.resets.append(reason)

    class target:  # noqa: N801 - a stand-in for Target
        class_name = "C"
        id = "0" * 64


class _Worker:
    index = 0

    def log(self, message):
        pass


def _watchdog(limit=30.0):
    return Watchdog(_Worker(), limit)


async def test_metered_passes_values_exceptions_and_cancellation_through():
    wd, host = _watchdog(), _Host()

    async def value():
        await trio.lowlevel.checkpoint()
        return 42

    async def boom():
        await trio.lowlevel.checkpoint()
        raise KeyError("k")

    assert await Metered(wd, host, value()) == 42
    with pytest.raises(KeyError):
        await Metered(wd, host, boom())
    with trio.move_on_after(0.01) as scope:
        await Metered(wd, host, trio.sleep_forever())  # noqa: ASYNC105 - awaited through Metered
    assert scope.cancelled_caught and host.resets == []


async def test_metered_resets_the_object_once_an_awaiting_loop_is_over_budget():
    wd, host = _watchdog(limit=0.05), _Host()

    async def spin():
        while True:
            await trio.lowlevel.checkpoint()

    host.reset = lambda reason: (host.resets.append(reason), scope.cancel())
    with trio.CancelScope() as scope:
        await Metered(wd, host, spin())
    assert len(host.resets) == 1 and "CPU limit" in host.resets[0]


async def test_signal_handler_raises_only_inside_an_open_step():
    wd = _watchdog(limit=0.0)
    wd._on_signal(0, None)  # no step: nothing happens
    host = _Host()

    async def check():
        with pytest.raises(CpuLimitExceeded):
            wd._on_signal(0, None)  # inside the event's own code
        return "done"

    with pytest.raises(Exception, match="CPU limit"):
        await Metered(wd, host, check())


def test_a_write_committed_deep_in_a_call_chain_marks_every_caller():
    root = Pending()
    child = Pending(root)
    root.kids.append(child)
    grandchild = Pending(child)
    child.kids.append(grandchild)
    assert not root.subtree_busy()
    child.children = 1
    assert root.subtree_busy()
    grandchild.mark_committed()
    assert root.committed and child.committed


def test_fault_table_counts_down_and_keeps_probabilities():
    fired = []
    table = FaultTable(_Worker())
    table.crash = lambda point, target: fired.append(point)
    host = _Host()
    target = Target("C", "0" * 64)
    table.arm("before_commit", target, 2)
    table.reach("before_commit", host)
    table.reach("after_commit", host)
    table.reach("before_commit", host)
    table.reach("before_commit", host)
    assert fired == ["before_commit", "before_commit"]
    table.arm("after_commit", target, 0.999999)
    for _ in range(3):
        table.reach("after_commit", host)
    assert fired.count("after_commit") == 3
    table.arm("after_commit", target, 0)
    table.reach("after_commit", host)
    assert fired.count("after_commit") == 3
    with pytest.raises(ValueError):
        table.arm("nowhere", target, 1)
