"""Worker processes: spawn, handshake, request/reply, crash detection and restart.

Each worker is a separate process (`python -m stateroom.worker`) connected by a
Unix socketpair whose child end it inherits. The supervisor owns a fixed shard map
(`shards.py`): worker *index* i owns the same shards across restarts.

Fencing: a worker is restarted only after its old process has been reaped, so the
old owner is provably dead (its SQLite locks released) before the new one serves
the shards.

Calls caught by a crash fail with `WorkerCrashedError`, `retryable=True` unless the
worker reported (`Committed`) that the event had made a durable write.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from stateroom._errors import DurableObjectError, WorkerCrashedError
from stateroom._framing import FramedConnection
from stateroom._protocol import (
    PROTOCOL_VERSION,
    AssignShards,
    Call,
    Committed,
    Hello,
    Reply,
    Stats,
    Welcome,
)


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


class Pending:
    __slots__ = ("event", "reply", "committed", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: Reply | None = None
        # True once the worker reported a durable write for this request.
        self.committed = False
        self.error: BaseException | None = None


class WorkerProc:
    """One worker slot (index) and its current process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = WorkerState.STARTING
        self.process: trio.Process | None = None
        self.conn: FramedConnection | None = None
        self.pid: int | None = None
        self.started_at = time.time()
        # Restarts of this slot since the supervisor started.
        self.restarts = 0
        # In-flight requests: request_id -> Pending. Failed all at once on death.
        self.pending: dict[int, Pending] = {}
        # Set while the current process is ready to serve; replaced on each restart.
        self.ready = trio.Event()
        self.objects_active = 0
        self.stats: dict[str, Any] = {}


class WorkerPool:
    def __init__(
        self,
        count: int,
        shard_count: int,
        settings: dict[str, Any],
        on_message: Callable[[WorkerProc, Any], None],
        on_ready: Callable[[WorkerProc], Any],
    ) -> None:
        self.count = count
        self.shard_count = shard_count
        self.settings = settings
        self.on_message = on_message
        # Async hook run after the handshake, before the worker is marked ready
        # (loads the current deployment).
        self.on_ready = on_ready
        self.workers = [WorkerProc(i) for i in range(count)]
        self.owners = [s % count for s in range(shard_count)]
        self._next_id = 0
        self.stopping = False
        self.nursery: trio.Nursery | None = None

    def shards_of(self, index: int) -> list[int]:
        return [s for s, o in enumerate(self.owners) if o == index]

    def owner_of_shard(self, shard: int) -> WorkerProc:
        return self.workers[self.owners[shard]]

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for w in self.workers:
                nursery.start_soon(self._supervise, w)
            with trio.fail_after(60):
                for w in self.workers:
                    await w.ready.wait()
            task_status.started()

    async def _supervise(self, w: WorkerProc) -> None:
        backoff = 0.05
        while not self.stopping:
            began = time.monotonic()
            await self._run_once(w)
            if self.stopping:
                break
            w.restarts += 1
            lived = time.monotonic() - began
            if lived > 5:
                backoff = 0.05
            else:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run_once(self, w: WorkerProc) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = child_sock.fileno()
        env = dict(os.environ)
        env["STATEROOM_WORKER_INDEX"] = str(w.index)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "stateroom.worker", "--fd", str(fd), "--index", str(w.index)],
                pass_fds=(fd,),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=False,
            )
        finally:
            child_sock.close()
        w.process = process
        w.pid = process.pid
        w.started_at = time.time()
        w.state = WorkerState.STARTING
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_sock))
        conn = FramedConnection(stream)
        w.conn = conn
        hello: list[Hello] = []
        got_hello = trio.Event()

        def dispatch(msg: Any) -> None:
            if not hello:
                if isinstance(msg, Hello) and msg.version == PROTOCOL_VERSION:
                    hello.append(msg)
                    got_hello.set()
                else:
                    conn.closed = True
                return
            self._on_worker_message(w, msg)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.serve_writer)

                async def read_then_stop() -> None:
                    await conn.serve_reader(dispatch)
                    nursery.cancel_scope.cancel()

                async def wait_exit() -> None:
                    await process.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read_then_stop)
                nursery.start_soon(wait_exit)
                with trio.move_on_after(30) as scope:
                    await got_hello.wait()
                if scope.cancelled_caught:
                    raise RuntimeError("worker did not say hello within 30 s")
                conn.send(
                    Welcome(
                        PROTOCOL_VERSION,
                        self.shard_count,
                        self.shards_of(w.index),
                        self.count,
                        self.settings,
                    )
                )
                conn.send(AssignShards(self.owners))
                await self.on_ready(w)
                w.state = WorkerState.READY
                w.ready.set()
                await trio.sleep_forever()
        except Exception as exc:  # noqa: BLE001 - a broken worker is restarted, never fatal
            print(f"stateroom: worker {w.index} failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            w.state = WorkerState.DEAD
            w.ready = trio.Event()
            conn.closed = True
            with trio.CancelScope(shield=True):
                # Fencing: the old process must be dead before its shards are served again.
                if process.returncode is None:
                    try:
                        process.send_signal(signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                await process.wait()
                try:
                    await stream.aclose()
                except Exception:  # noqa: BLE001
                    pass
            self._fail_pending(w, process.returncode)

    def _fail_pending(self, w: WorkerProc, code: int | None) -> None:
        pending, w.pending = w.pending, {}
        for p in pending.values():
            if not p.event.is_set():
                p.error = WorkerCrashedError(
                    f"worker {w.index} (pid {w.pid}) exited with code {code} during the call",
                    retryable=not p.committed,
                )
                p.event.set()

    def _on_worker_message(self, w: WorkerProc, msg: Any) -> None:
        if isinstance(msg, Reply):
            p = w.pending.pop(msg.request_id, None)
            if p is not None:
                p.reply = msg
                p.event.set()
        elif isinstance(msg, Committed):
            p = w.pending.get(msg.request_id)
            if p is not None:
                p.committed = True
        elif isinstance(msg, Stats):
            w.objects_active = msg.objects_active
            self.on_message(w, msg)
        else:
            self.on_message(w, msg)

    def next_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(self, w: WorkerProc, make: Callable[[int], Any], *, wait_ready: float = 10.0) -> Reply:
        """Send `make(request_id)` to worker `w` and await its reply.

        Raises `WorkerCrashedError` if the worker dies first (retryable unless the
        call committed), `DurableObjectError(retryable=True)` if it is not ready in
        time. Cancellation sends nothing further; the worker's reply is dropped.
        """
        if w.state is not WorkerState.READY:
            with trio.move_on_after(wait_ready):
                await w.ready.wait()
            if w.state is not WorkerState.READY:
                raise DurableObjectError(
                    f"worker {w.index} is restarting; try again", retryable=True
                )
        rid = self.next_request_id()
        p = Pending()
        w.pending[rid] = p
        conn = w.conn
        assert conn is not None
        try:
            conn.send(make(rid))
        except trio.ClosedResourceError:
            w.pending.pop(rid, None)
            raise DurableObjectError(f"worker {w.index} is restarting; try again", retryable=True) from None
        try:
            await p.event.wait()
        except trio.Cancelled:
            w.pending.pop(rid, None)
            raise
        if p.error is not None:
            raise p.error
        assert p.reply is not None
        return p.reply

    async def broadcast(self, make: Callable[[int], Any]) -> list[Reply | BaseException]:
        results: list[Reply | BaseException] = [None] * self.count  # type: ignore[list-item]

        async def one(i: int) -> None:
            try:
                results[i] = await self.request(self.workers[i], make, wait_ready=30)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(self.count):
                nursery.start_soon(one, i)
        return results

    def kill(self, index: int) -> None:
        w = self.workers[index]
        if w.process is not None and w.process.returncode is None:
            w.process.send_signal(signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        from stateroom._protocol import Shutdown

        self.stopping = True
        for w in self.workers:
            if w.conn is not None and not w.conn.closed:
                try:
                    w.conn.send(Shutdown(grace))
                except trio.ClosedResourceError:
                    pass
        with trio.move_on_after(grace + 3):
            for w in self.workers:
                if w.process is not None:
                    await w.process.wait()
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGKILL)
                await w.process.wait()


__all__ = ["Call", "WorkerPool", "WorkerProc", "WorkerState"]
