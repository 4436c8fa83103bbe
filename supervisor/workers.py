"""Worker processes: spawn, handshake, request/reply, crash detection and restart.

Each worker is a separate process (`python -m stateroom.worker`) connected by a
Unix socketpair whose child end it inherits. The supervisor owns a fixed shard map
(`shards.py`): worker *index* i owns the same shards across restarts.

Fencing: a worker is restarted only after its old process has been reaped, so the
old owner is provably dead (its SQLite locks released) before the new one serves
the shards (`fencing.py` extends this across supervisor lifetimes).

Crash detection: the process's exit (trio waits on a pidfd) or the socket's EOF,
whichever comes first. Frames the worker wrote before dying are still read (the
reader drains the socket to EOF), so a `Committed` it sent is never missed; one it
had no time to send is in its commit log (`stateroom._commitlog`: shared memory the
worker writes before each COMMIT), read once the process is dead.

Calls caught by a crash fail with `WorkerCrashedError`, `retryable=True` unless the
call may have had a durable effect: the worker announced (commit log and
`Committed`, before the COMMIT) a write for it, or a call made on the request's behalf in another
worker (`Call.origin`, relayed here: the request's *subtree*) did. When the dead
worker leaves calls of the subtree running elsewhere, the request is settled, not
failed at once: those calls are abandoned (`Abandon`: their events stop unless they
already wrote), and once the subtree is quiet the failure is retryable exactly if
nothing in it announced a write; if it is still busy after `SETTLE_S`, it is not
retryable. So a retryable failure is always safe to retry.

Spare: a second after every slot is ready, the pool starts one spare worker process that
imports everything and waits for its `Welcome`. A restart takes the spare (no
interpreter start, no imports: the slot serves again in tens of milliseconds) and
a new spare is started in the background. `STATEROOM_SPARE_WORKER=0` turns it off.

Restart: at once, unless the slot keeps crashing: after `FREE_RESTARTS` processes
in a row each died within `CRASH_LOOP_S` of its start, the next restarts wait
0.25 s, doubling up to `MAX_BACKOFF_S`; a process that lives longer resets that.
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
from pathlib import Path
from typing import Any

import trio

from stateroom._commitlog import CommitLog
from stateroom._errors import DurableObjectError, WorkerCrashedError
from stateroom._framing import FramedConnection
from stateroom._protocol import (
    PROTOCOL_VERSION,
    Abandon,
    AssignShards,
    Call,
    Committed,
    Hello,
    Reply,
    Stats,
    Welcome,
)

from .fencing import WorkerRegistry


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


# A worker that dies sooner than this after its start is crash-looping: back off.
CRASH_LOOP_S = 1.5
# Quick deaths in a row restarted without delay before backoff begins.
FREE_RESTARTS = 3
MAX_BACKOFF_S = 2.0
# Seconds after start-up before the first spare worker is started.
SPARE_DELAY_S = 1.0
# Seconds a dead worker's request waits for its calls elsewhere to settle.
SETTLE_S = 5.0


class Pending:
    __slots__ = (
        "event",
        "reply",
        "committed",
        "error",
        "parent",
        "children",
        "kids",
        "where",
        "path",
    )

    def __init__(self, parent: Pending | None = None, path: str | None = None) -> None:
        self.event = trio.Event()
        self.reply: Reply | None = None
        # True once the worker announced a durable write for this request (or a call
        # made on its behalf did).
        self.committed = False
        self.error: BaseException | None = None
        # The request on whose behalf this one was made (a relayed worker `Call`).
        self.parent = parent
        # Relays of calls made on this request's behalf, from the `Call`'s arrival
        # until the callee's reply (see `Supervisor.on_worker_message`).
        self.children = 0
        # The requests those relays sent (each a Pending of another worker).
        self.kids: list[Pending] = []
        # (worker, request_id) this request was sent as, once sent.
        self.where: tuple[WorkerProc, int] | None = None
        # The URL path of the app request this is (`Default.fetch`), for affinity
        # routing; None for every other request. Never changes.
        self.path = path

    def mark_committed(self) -> None:
        """A durable write happened for this request: also for every ancestor."""
        p: Pending | None = self
        while p is not None and not p.committed:
            p.committed = True
            p = p.parent

    def subtree(self) -> list[Pending]:
        """This request and every request made on its behalf, transitively."""
        out, stack = [], [self]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(p.kids)
        return out

    def subtree_busy(self) -> bool:
        """True while a call made on this request's behalf may still run somewhere."""
        return any(p.children > 0 for p in self.subtree())


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
        # Set while the current process is ready to serve; replaced by an unset one
        # when a ready process dies. A process that dies before it was ready leaves
        # it unset, so whoever waits for the slot waits for the next process.
        self.ready = trio.Event()
        self.objects_active = 0
        self.stats: dict[str, Any] = {}
        # trio.current_time() of the last frame from the current process.
        self.last_heard = 0.0


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
        data_dir = settings.get("data_dir")
        # Workers started, on disk, so the next supervisor can fence them out.
        self.registry = WorkerRegistry(Path(data_dir)) if data_dir else None
        # A started, idle worker process waiting to replace a dead one: (process,
        # supervisor end of its socket), or None. Its `Hello` waits unread.
        self._spare: tuple[trio.Process, socket.socket] | None = None
        # Cancels the task watching the spare (taking it stops the watch).
        self._spare_scope: trio.CancelScope | None = None
        # pid -> commit log of each worker process started and not yet settled.
        self.commit_logs: dict[int, CommitLog] = {}
        self.use_spare = os.environ.get("STATEROOM_SPARE_WORKER", "1").strip() not in (
            "0",
            "false",
            "no",
            "off",
        )

    def shards_of(self, index: int) -> list[int]:
        return [s for s, o in enumerate(self.owners) if o == index]

    def owner_of_shard(self, shard: int) -> WorkerProc:
        return self.workers[self.owners[shard]]

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.registry is not None:
            killed = await trio.to_thread.run_sync(self.registry.reap_leftovers)
            if killed:
                print(
                    f"stateroom: stopped {len(killed)} leftover worker(s) of an earlier"
                    f" supervisor: pids {killed}",
                    file=sys.stderr,
                    flush=True,
                )
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for w in self.workers:
                nursery.start_soon(self._supervise, w)
            with trio.fail_after(60):
                for w in self.workers:
                    await w.ready.wait()
            task_status.started()
            if self.use_spare:
                nursery.start_soon(self._first_spare)

    async def _supervise(self, w: WorkerProc) -> None:
        quick_deaths = 0
        while not self.stopping:
            began = time.monotonic()
            try:
                await self._run_once(w)
            except OSError as exc:  # could not start a process (fork, fds): try again later
                print(
                    f"stateroom: cannot start worker {w.index}: {exc!r}",
                    file=sys.stderr,
                    flush=True,
                )
            if self.stopping:
                break
            w.restarts += 1
            lived = time.monotonic() - began
            quick_deaths = quick_deaths + 1 if lived < CRASH_LOOP_S else 0
            if quick_deaths > FREE_RESTARTS:
                await trio.sleep(min(MAX_BACKOFF_S, 0.25 * 2 ** (quick_deaths - FREE_RESTARTS - 1)))

    async def _spawn(self, index: int) -> tuple[trio.Process, socket.socket]:
        """Start a worker process for slot `index` (-1: a spare); (process, our socket end).

        The process's commit log (`stateroom._commitlog`) is kept in `self.commit_logs`
        by pid until it has been read after the process's death.
        """
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = child_sock.fileno()
        log = CommitLog.create()
        env = dict(os.environ)
        env["STATEROOM_WORKER_INDEX"] = str(index)
        # The C allocator with a fixed mmap threshold from the first allocation on, so
        # memory freed by hibernation can go back (worker/memory.py).
        env.setdefault("PYTHONMALLOC", "malloc")
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "stateroom.worker",
                    "--fd",
                    str(fd),
                    "--index",
                    str(index),
                    "--commit-log",
                    str(log.fd),
                ],
                pass_fds=(fd, log.fd),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=False,
            )
        except BaseException:
            parent_sock.close()
            log.close()
            raise
        finally:
            child_sock.close()
        self.commit_logs[process.pid] = log
        if self.registry is not None:
            self.registry.record(index, process.pid)
        return process, parent_sock

    def _take_spare(self) -> tuple[trio.Process, socket.socket] | None:
        """The spare, if one is alive; a new one is then started in the background."""
        spare, self._spare = self._spare, None
        if self._spare_scope is not None:
            self._spare_scope.cancel()
            self._spare_scope = None
        if spare is None:
            return None
        if spare[0].returncode is not None:
            spare[1].close()
            self._drop_log(spare[0].pid)
            return None
        if self.nursery is not None and not self.stopping:
            self.nursery.start_soon(self._keep_spare)
        return spare

    def _drop_log(self, pid: int) -> None:
        """Release the commit log of a process that never served (a spare)."""
        log = self.commit_logs.pop(pid, None)
        if log is not None:
            log.close()

    async def _first_spare(self) -> None:
        # A moment after start-up, so the spare does not compete with it (and a
        # runtime living only a second, as in many tests, never pays for one).
        await trio.sleep(SPARE_DELAY_S)
        if self._spare is None and not self.stopping:
            await self._keep_spare()

    async def _keep_spare(self) -> None:
        """Start a spare and watch it until it is taken (or dies: then start another)."""
        while not self.stopping and self._spare is None:
            try:
                process, sock = await self._spawn(-1)
            except OSError as exc:
                print(
                    f"stateroom: cannot start a spare worker: {exc!r}", file=sys.stderr, flush=True
                )
                await trio.sleep(5.0)
                continue
            if self.stopping:
                process.kill()
                sock.close()
                self._drop_log(process.pid)
                return
            self._spare = (process, sock)
            with trio.CancelScope() as scope:
                self._spare_scope = scope
                await process.wait()
                # Died while waiting to be used.
                if self._spare is not None and self._spare[0] is process:
                    self._spare = None
                    sock.close()
                    self._drop_log(process.pid)
                    print(
                        f"stateroom: the spare worker (pid {process.pid}) exited with code"
                        f" {process.returncode}",
                        file=sys.stderr,
                        flush=True,
                    )
                await trio.sleep(1.0)
            if scope.cancelled_caught:
                return

    async def _run_once(self, w: WorkerProc) -> None:
        spare = self._take_spare() if self.use_spare else None
        if spare is not None:
            process, parent_sock = spare
            if self.registry is not None:
                self.registry.record(w.index, process.pid)
        else:
            process, parent_sock = await self._spawn(w.index)
        w.process = process
        w.pid = process.pid
        w.started_at = time.time()
        w.last_heard = trio.current_time()
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

                reader_done = trio.Event()

                async def read_then_stop() -> None:
                    try:
                        await conn.serve_reader(dispatch)
                    finally:
                        reader_done.set()
                    nursery.cancel_scope.cancel()

                async def wait_exit() -> None:
                    await process.wait()
                    # Read what the worker wrote before it died (EOF follows at once,
                    # unless a child of the worker inherited the socket).
                    with trio.move_on_after(0.5):
                        await reader_done.wait()
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
                        w.index,
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
            if w.ready.is_set():
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
        log = self.commit_logs.pop(w.pid, None) if w.pid is not None else None
        if log is not None:
            # Requests whose COMMIT the dead process had begun (their `Committed`
            # frames may not have left it): their failures are not retryable.
            for rid in log.announced():
                p = pending.get(rid)
                if p is not None:
                    p.mark_committed()
            log.close()
        for p in pending.values():
            if p.event.is_set():
                continue
            if p.committed or not p.subtree_busy() or self.nursery is None:
                self._fail_crashed(w, p, code)
            else:
                self.nursery.start_soon(self._settle, w, p, code)

    async def _settle(self, w: WorkerProc, p: Pending, code: int | None) -> None:
        """Abandon the dead request's calls elsewhere, wait for quiet, then fail it."""
        for q in p.subtree():
            if q is not p and q.where is not None and not q.event.is_set():
                callee, rid = q.where
                if callee.conn is not None and not callee.conn.closed:
                    try:
                        callee.conn.send(Abandon(rid))
                    except trio.ClosedResourceError:
                        pass
        with trio.move_on_after(SETTLE_S):
            while p.subtree_busy() and not p.committed:
                await trio.sleep(0.005)
        self._fail_crashed(w, p, code)

    def _fail_crashed(self, w: WorkerProc, p: Pending, code: int | None) -> None:
        durable = p.committed or p.subtree_busy()
        p.error = WorkerCrashedError(
            f"worker {w.index} (pid {w.pid}) exited with code {code} during the call"
            + (" (it may have made a durable write, so it is not retryable)" if durable else ""),
            retryable=not durable,
        )
        p.event.set()

    def _on_worker_message(self, w: WorkerProc, msg: Any) -> None:
        w.last_heard = trio.current_time()
        if isinstance(msg, Reply):
            p = w.pending.pop(msg.request_id, None)
            if p is not None:
                p.reply = msg
                p.event.set()
        elif isinstance(msg, Committed):
            p = w.pending.get(msg.request_id)
            if p is not None:
                p.mark_committed()
        elif isinstance(msg, Stats):
            w.objects_active = msg.objects_active
            self.on_message(w, msg)
        else:
            self.on_message(w, msg)

    def next_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(
        self,
        w: WorkerProc,
        make: Callable[[int], Any],
        *,
        wait_ready: float = 10.0,
        parent: Pending | None = None,
        starting: bool = False,
        path: str | None = None,
    ) -> Reply:
        """Send `make(request_id)` to worker `w` and await its reply.

        `parent`: the request on whose behalf this call is made (a relayed worker
        `Call`); a durable write by this call marks the parent too. (The relay
        counts itself in `parent.children` from the moment the `Call` arrives.)
        `starting`: send even though `w` is still starting (readiness hooks).
        `path`: the URL path of an app request (see `Pending.path`).

        Raises `WorkerCrashedError` if the worker dies first (retryable unless the
        call may have committed), `DurableObjectError(retryable=True)` if it is not
        ready in time. Cancellation sends nothing further; the worker's reply is
        dropped.
        """
        if starting:
            if w.state is WorkerState.DEAD or w.conn is None:
                raise DurableObjectError(
                    f"worker {w.index} is restarting; try again", retryable=True
                )
        elif w.state is not WorkerState.READY:
            with trio.move_on_after(wait_ready):
                await w.ready.wait()
            if w.state is not WorkerState.READY:
                raise DurableObjectError(
                    f"worker {w.index} is restarting; try again", retryable=True
                )
        rid = self.next_request_id()
        p = Pending(parent, path)
        p.where = (w, rid)
        if parent is not None:
            parent.kids.append(p)
        w.pending[rid] = p
        conn = w.conn
        assert conn is not None
        try:
            conn.send(make(rid))
        except trio.ClosedResourceError:
            w.pending.pop(rid, None)
            raise DurableObjectError(
                f"worker {w.index} is restarting; try again", retryable=True
            ) from None
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
        spare = self._take_spare()
        if spare is not None:
            spare[1].close()  # the spare exits on EOF
        with trio.move_on_after(grace + 3):
            for w in self.workers:
                if w.process is not None:
                    await w.process.wait()
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGKILL)
                await w.process.wait()


__all__ = ["Call", "WorkerPool", "WorkerProc", "WorkerState"]
