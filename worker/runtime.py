"""The worker process: loads deployments, hosts the objects of its shards, runs `Default`.

A worker talks to its supervisor over one Unix socket (inherited fd) using the
framed protocol of `stateroom._protocol`. It unpickles deployed code (only workers
ever do), keeps the catalog of live objects (`catalog.py`) for the shards it owns,
and runs the app's `Default` entrypoint for any HTTP request it is handed.

Stub calls from user code go straight to the local catalog when this worker owns
the target's shard, else through the supervisor (`Call` / `CallReply`).

Lifetime: the worker exits when its supervisor connection closes (so orphans of a
dead supervisor go away by themselves).
"""

from __future__ import annotations

import contextvars
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import trio

from stateroom import _codec
from stateroom._commitlog import CommitLog
from stateroom._errors import (
    BindingNotFoundError,
    DurableObjectError,
    WorkerCrashedError,
    error_from_fields,
    error_to_fields,
)
from stateroom._framing import FramedConnection
from stateroom._http import Request, Response
from stateroom._ids import DurableObjectId, IdFactory
from stateroom._object import DurableObject, WorkerEntrypoint, is_rpc_callable
from stateroom._protocol import (
    PROTOCOL_VERSION,
    Abandon,
    Admin,
    AssignShards,
    Call,
    CallReply,
    Cancel,
    Committed,
    Fetch,
    FlushMeters,
    Hello,
    LoadDeployment,
    Reply,
    Rpc,
    RunAlarm,
    Shutdown,
    Stats,
    Target,
    Welcome,
    shard_of,
)
from stateroom._stub import DurableObjectNamespace
from stateroom._wire import request_from_wire, request_to_wire, response_from_wire, response_to_wire

from .alarms import AlarmStore
from .catalog import CURRENT_EVENT, Event, HostState, ObjectHost
from .commits import Committer
from .context import EntrypointContext, Env, ObjectState
from .faults import FaultTable
from .limits import Watchdog
from .memory import MemoryReleaser
from .meters import WorkerMeters
from .pitr import Pitr
from .redeploy import Redeployer
from .sockets import SocketRegistry
from .storage import DEFAULT_MAX_DB_BYTES, Database

# The supervisor request the current task serves (set for `Default` requests; object
# events carry theirs in `Event.request_id`).
ORIGIN: contextvars.ContextVar[int] = contextvars.ContextVar("stateroom_origin", default=0)


def current_origin() -> int:
    """The supervisor request on whose behalf the current task works (0: none).

    A stub call made for it carries it (`Call.origin`, or the local event's
    `request_id`), so a durable write by the callee marks that request as having a
    durable effect: its failure is then not retryable (SPEC §8).
    """
    event = CURRENT_EVENT.get()
    if event is not None:
        return event.request_id or 0
    return ORIGIN.get()


async def _skip_event(instance: Any) -> None:
    """Stands in for an abandoned event that had not started (see `Worker.abandon`)."""


def error_response(exc: BaseException, debug: bool) -> Response:
    """The 500 (or 503) HTTP response for an exception that escaped a fetch handler."""
    if isinstance(exc, DurableObjectError) and (exc.retryable or exc.overloaded):
        return Response(f"{type(exc).__name__}: {exc}", status=503, headers={"retry-after": "1"})
    body = f"{type(exc).__name__}: {exc}"
    if debug:
        body += "\n\n" + "".join(traceback.format_exception(exc))
    return Response(body, status=500)


class Deployment:
    """One loaded deployment: classes unpickled from the bundle plus its manifest."""

    def __init__(self, version: int, bundle: bytes, manifest: dict[str, Any]) -> None:
        self.version = version
        self.manifest = manifest
        try:
            loaded = cloudpickle.loads(bundle)
        except Exception as exc:
            raise ValueError(f"cannot load deployment code: {type(exc).__name__}: {exc}") from None
        if not isinstance(loaded, dict) or "classes" not in loaded:
            raise ValueError("deployment bundle has an unexpected shape")
        self.classes: dict[str, type] = dict(loaded["classes"])
        self.default: type | None = loaded.get("default")
        for binding, class_name in manifest["bindings"].items():
            cls = self.classes.get(class_name)
            if cls is None:
                raise ValueError(
                    f"binding {binding!r}: class {class_name!r} is not defined in the module"
                )
        for name, cls in self.classes.items():
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise ValueError(f"{name!r} is not a DurableObject subclass")
        if self.default is not None and not (
            isinstance(self.default, type) and issubclass(self.default, WorkerEntrypoint)
        ):
            raise ValueError("'Default' must subclass WorkerEntrypoint")
        # class name -> (namespace key, secret)
        self.namespaces: dict[str, tuple[int, bytes]] = {
            c: (int(k), bytes.fromhex(s)) for c, (k, s) in manifest["namespaces"].items()
        }


class WorkerTransport:
    """Stub transport inside a worker: local delivery or a `Call` via the supervisor."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def fetch(self, target: Target, request: Request) -> Response:
        w = self.worker
        if w.owns(target):
            return await w.object_fetch(target, request, current_origin())
        reply = await w.call(Call(0, target, "fetch", request=request_to_wire(request)))
        assert reply.response is not None
        return response_from_wire(reply.response)

    async def rpc(self, target: Target, method: str, args: bytes) -> Any:
        w = self.worker
        if w.owns(target):
            return _codec.decode(await w.object_rpc(target, method, args, current_origin()))
        reply = await w.call(Call(0, target, "rpc", method=method, args=args))
        return _codec.decode(reply.value)


class Worker:
    def __init__(self, index: int, conn: FramedConnection) -> None:
        self.index = index
        self.conn = conn
        self.settings: dict[str, Any] = {}
        self.debug = False
        self.data_dir = Path(".")
        self.nursery: trio.Nursery = None  # type: ignore[assignment]
        self.deployment: Deployment | None = None
        self.env: Env | None = None
        # Live objects of this worker: (class name, id) -> host.
        self.catalog: dict[tuple[str, str], ObjectHost] = {}
        self.shard_count = 256
        # owners[shard] = worker index owning it.
        self.owners: list[int] = []
        self._next_call = 0
        # Outgoing Calls awaiting a CallReply: request_id -> [event, reply].
        self._calls: dict[int, list[Any]] = {}
        # Supervisor requests being served: request_id -> cancel scope.
        self._serving: dict[int, trio.CancelScope] = {}
        # Object events delivered for a supervisor request (also local calls made on
        # its behalf): request_id -> events not finished. Read by `abandon`.
        self.events: dict[int, set[Event]] = {}
        # Armed crash points (fault injection, SPEC §13).
        self.faults = FaultTable(self)
        # CPU limit per event; installed once the supervisor's settings arrive.
        self.watchdog: Watchdog | None = None
        self.transport = WorkerTransport(self)
        self.alarms = AlarmStore(self)
        self.sockets = SocketRegistry(self)
        self.memory = MemoryReleaser()
        self.pitr = Pitr(self)
        self.redeploy = Redeployer(self)
        self.meters = WorkerMeters(self)
        # Commits every object's writes at the end of each loop turn (commits.py);
        # installed as a trio instrument once the settings arrive.
        self.committer = Committer(parallel=False)
        # Shared with the supervisor: requests about to commit (see notify_committed).
        self.commit_log: CommitLog | None = None
        self.stopping = False

    # ------------------------------------------------------------------ util

    def log(self, message: str) -> None:
        print(f"[worker {self.index} pid {os.getpid()}] {message}", file=sys.stderr, flush=True)

    def owns(self, target: Target) -> bool:
        shard = shard_of(target.id, self.shard_count)
        return bool(self.owners) and self.owners[shard] == self.index

    def notify_committed(self, request_ids: list[int]) -> None:
        """Tell the supervisor, before the COMMIT runs, that these requests are about
        to make a durable write (so their failures are no longer retryable).

        They go into the commit log shared with the supervisor (`_commitlog.py`: a
        kill right after the commit cannot lose them, and no system call is made),
        and as `Committed` frames that leave with the next frame written, usually
        the request's `Reply` (one write and one wake-up of the supervisor per
        request, not two). A frame no sooner than the `Reply` is soon enough: the
        supervisor needs it only when a worker dies, and then either this worker's
        log has it or the request's subtree is still busy (which counts as durable
        too, `workers.py`). Without a log the frames are handed to the kernel now.
        """
        log = self.commit_log
        if log is None:
            for rid in request_ids:
                self.conn.send(Committed(rid))
            self.conn.flush_now()
            return
        for rid in request_ids:
            log.announce(rid)
            self.conn.send_later(Committed(rid))

    def fault_point(self, point: str, host: ObjectHost) -> None:
        """Crash here if a fault is armed for `point` and this object (faults.py)."""
        self.faults.reach(point, host)

    def metered(self, host: ObjectHost, coro: Any) -> Any:
        """`coro` (an event of `host`) under the CPU limit per event (limits.py)."""
        if self.watchdog is None:
            return coro
        return self.watchdog.metered(host, coro)

    def has_alarm(self, host: ObjectHost) -> bool:
        return self.alarms.get(host) is not None

    # ------------------------------------------------------------------ deployments

    def activate(self, dep: Deployment) -> None:
        """Make `dep` current; live objects move to it as `redeploy.py` describes."""
        self.redeploy.activate(dep)

    def install(self, dep: Deployment) -> None:
        """Switch `deployment` and `env` (called by `Redeployer.activate`)."""
        values: dict[str, Any] = dict(dep.manifest.get("vars", {}))
        for binding, class_name in dep.manifest["bindings"].items():
            key_secret = dep.namespaces.get(class_name)
            factory = IdFactory(key_secret[1]) if key_secret else None
            values[binding] = DurableObjectNamespace(binding, class_name, factory, self.transport)
        self.deployment = dep
        self.env = Env(values)

    def object_path(self, target: Target) -> Path:
        dep = self.deployment
        assert dep is not None
        ns_key = dep.namespaces[target.class_name][0]
        return self.data_dir / "objects" / str(ns_key) / f"{target.id}.sqlite"

    # ------------------------------------------------------------------ objects

    def host_for(self, target: Target) -> ObjectHost:
        target = self.redeploy.resolve(target)
        key = (target.class_name, target.id)
        host = self.catalog.get(key)
        if host is not None:
            if target.name is not None and host.target.name is None:
                host.target = target
            return host
        dep = self.deployment
        if (
            dep is None
            or target.class_name not in dep.classes
            or target.class_name not in dep.namespaces
        ):
            raise BindingNotFoundError(f"no class {target.class_name!r} in the current deployment")
        if not self.owns(target):
            raise DurableObjectError("this worker does not own the object's shard", retryable=True)
        path = self.object_path(target)
        db = Database(
            path,
            self.settings.get("durability", "full"),
            lambda: None,
            max_db_bytes=self.settings.get("max_db_bytes", DEFAULT_MAX_DB_BYTES),
            history=self.pitr.history_for(path),
        )
        host = ObjectHost(self, target, dep.classes[target.class_name], db)
        self.catalog[key] = host
        return host

    def construct(self, host: ObjectHost) -> None:
        dep = self.deployment
        assert dep is not None
        cls = dep.classes.get(host.target.class_name)
        if cls is None:
            raise BindingNotFoundError(f"class {host.target.class_name!r} is no longer deployed")
        host.cls = cls
        host.stale = False  # built from the current deployment (see redeploy.py)
        self.pitr.before_open(host)
        self.alarms.on_construct(host)
        ctx = ObjectState(host, DurableObjectId(host.target.id, host.target.name))
        host.ctx = ctx
        host.instance = cls(ctx, self.env)
        host.state = HostState.ACTIVE
        self.meters.activated(host)
        self.sockets.on_construct(host)

    async def deliver(
        self, target: Target, fn: Any, request_id: int | None, host: ObjectHost | None = None
    ) -> Any:
        host = host or self.host_for(target)
        event = Event(fn, request_id)
        inline = host.can_run_inline()
        if not inline:
            host.submit(event)
        if request_id:
            self.events.setdefault(request_id, set()).add(event)
        try:
            if inline:
                await host.run_inline(event)
            else:
                await event.done.wait()
        finally:
            if request_id:
                events = self.events.get(request_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self.events[request_id]
        if event.error is not None:
            raise event.error
        return event.result

    def abandon(self, request_id: int) -> None:
        """The maker of `request_id` is gone: stop its events that wrote nothing.

        A queued event is dropped, a running one cancelled (its object is not
        reset). Events that wrote run on: their commit is announced as usual, so
        the supervisor knows the dead caller's request had a durable effect.
        """
        for event in list(self.events.get(request_id, ())):
            if event.wrote or event.committed or event.done.is_set():
                continue
            if event.scope is not None:
                # Finishes the event once cancelled (after any write it still makes
                # is durable; see `ObjectHost._run_event`).
                event.scope.cancel()
            else:
                event.finish(
                    error=DurableObjectError("the caller of this request is gone", retryable=True)
                )
                event.fn = _skip_event

    async def deliver_call(
        self, target: Target, fn: Any, request_id: int | None, host: ObjectHost
    ) -> Any:
        """`deliver` a fetch or RPC: its reply is ready (writes durable, output gate
        open) when the event finishes, which is the `before_reply` crash point."""
        try:
            result = await self.deliver(target, fn, request_id, host)
        except trio.Cancelled:
            raise
        except BaseException:
            self._reply_ready(target)
            raise
        self._reply_ready(target)
        return result

    def _reply_ready(self, target: Target) -> None:
        host = self.catalog.get((target.class_name, target.id))
        if host is not None:
            self.fault_point("before_reply", host)

    async def object_fetch(
        self, target: Target, request: Request, request_id: int | None
    ) -> Response:
        debug = self.debug

        async def fn(instance: Any) -> Response:
            handler = getattr(instance, "fetch", None)
            if handler is None:
                return Response("object has no fetch handler", status=501)
            try:
                response = await handler(request)
            except DurableObjectError:
                raise
            except Exception as exc:
                return error_response(exc, debug)
            if not isinstance(response, Response):
                return error_response(
                    TypeError(f"fetch must return a Response, not {type(response).__name__}"),
                    debug,
                )
            return response

        host = self.host_for(target)
        self.meters.count_request(host)
        return await self.deliver_call(target, fn, request_id, host)

    async def object_rpc(
        self, target: Target, method: str, args: bytes, request_id: int | None
    ) -> bytes:
        call_args, call_kwargs = _codec.decode(args)

        async def fn(instance: Any) -> bytes:
            if not is_rpc_callable(type(instance), method):
                raise TypeError(
                    f"{type(instance).__name__} has no RPC method {method!r}"
                    " (public async methods only; handlers and _names are not callable)"
                )
            result = await getattr(instance, method)(*call_args, **call_kwargs)
            return _codec.encode(result)

        host = self.host_for(target)
        self.meters.count_request(host)
        return await self.deliver_call(target, fn, request_id, host)

    def evict(self, host: ObjectHost) -> None:
        if host.db.in_txn and not host.inflight:
            host.commit_quietly()  # writes of a finished background task, not yet committed
        self.committer.discard(host)
        key = (host.target.class_name, host.target.id)
        if self.catalog.get(key) is host:
            del self.catalog[key]
        host.close()
        self.meters.deactivated(host)

    async def serve_evictions(self) -> None:
        evict_after = float(self.settings.get("evict_after", 60))
        hibernate_after = float(self.settings.get("hibernate_after", 10))
        while True:
            await trio.sleep(min(1.0, max(0.05, min(evict_after, hibernate_after) / 4)))
            for host in list(self.catalog.values()):
                idle = host.idle_for()
                if not idle:
                    continue
                limit = hibernate_after if self.sockets.count(host) else evict_after
                if getattr(host, "stale", False) or idle >= limit:
                    self.evict(host)
                    self.memory.note_evicted()
            # Hand the pages of dropped instances back to the system (memory.py).
            self.memory.maybe_release()

    def send_stats(self) -> None:
        """Report gauges and the meters counted since the last report (see meters.py)."""
        active = sum(1 for h in self.catalog.values() if h.instance is not None)
        self.conn.send(Stats(objects_active=active, meters=self.meters.take()))

    async def serve_stats(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.send_stats()

    # ------------------------------------------------------------------ calls out

    async def call(self, msg: Call) -> Any:
        self._next_call += 1
        rid = self._next_call
        slot: list[Any] = [trio.Event(), None]
        self._calls[rid] = slot
        try:
            self.conn.send(
                Call(
                    rid,
                    msg.target,
                    msg.kind,
                    msg.request,
                    msg.method,
                    msg.args,
                    origin=current_origin(),
                )
            )
            await slot[0].wait()
        finally:
            self._calls.pop(rid, None)
        reply: CallReply = slot[1]
        if not reply.ok:
            raise error_from_fields(reply.error or {})
        return reply

    # ------------------------------------------------------------------ requests in

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, CallReply):
            slot = self._calls.get(msg.request_id)
            if slot is not None:
                slot[1] = msg
                slot[0].set()
        elif isinstance(msg, LoadDeployment) and not msg.validate_only:
            self._load_in_frame_order(msg)
        elif isinstance(msg, (Fetch, Rpc, Admin, LoadDeployment)):
            self.nursery.start_soon(self._serve_request, msg)
        elif isinstance(msg, Cancel):
            scope = self._serving.get(msg.request_id)
            if scope is not None:
                scope.cancel()
        elif isinstance(msg, Abandon):
            self.abandon(msg.request_id)
        elif isinstance(msg, AssignShards):
            self.owners = list(msg.owners)
        elif isinstance(msg, RunAlarm):
            self.nursery.start_soon(self.alarms.serve_run, msg)
        elif isinstance(msg, FlushMeters):
            self.send_stats()
            self.conn.send(Reply(msg.request_id, True))
        elif isinstance(msg, Shutdown):
            self.stopping = True
            self.nursery.start_soon(self._shutdown, msg.grace)
        else:
            self.sockets.on_message(msg)

    def _load_in_frame_order(self, msg: LoadDeployment) -> None:
        """Activate a deployment inline, before the reader looks at the next frame.

        A call that follows it on the wire (say, relayed from a worker that already
        runs the new code and names a renamed class) then finds the new code here.
        """
        try:
            self.activate(Deployment(msg.version, msg.bundle, msg.manifest))
            reply = Reply(msg.request_id, True)
        except Exception as exc:  # noqa: BLE001 - becomes the supervisor's error
            reply = Reply(msg.request_id, False, error=error_to_fields(exc))
        self.conn.send(reply)

    async def _shutdown(self, grace: float) -> None:
        with trio.move_on_after(grace):
            while any(h.inflight or h.queue for h in self.catalog.values()):
                await trio.sleep(0.02)
        for host in list(self.catalog.values()):
            if not host.inflight:
                try:
                    host.commit()
                except Exception:  # noqa: BLE001
                    pass
            self.evict(host)
        os._exit(0)

    def requests_in_flight(self) -> int:
        """Requests from the supervisor this worker is serving now."""
        return len(self._serving)

    async def _serve_request(self, msg: Any) -> None:
        rid = msg.request_id
        ORIGIN.set(rid)
        with trio.CancelScope() as scope:
            self._serving[rid] = scope
            try:
                reply = await self._answer(msg)
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    raise
                reply = Reply(rid, False, error=error_to_fields(exc))
            finally:
                self._serving.pop(rid, None)
            self.conn.send(reply)

    async def _answer(self, msg: Any) -> Reply:
        rid = msg.request_id
        if isinstance(msg, Fetch):
            request = request_from_wire(msg.request)
            if msg.target is None:
                response = await self.run_default(request)
            else:
                response = await self.object_fetch(msg.target, request, rid)
            return Reply(rid, True, response=response_to_wire(response))
        if isinstance(msg, Rpc):
            value = await self.object_rpc(msg.target, msg.method, msg.args, rid)
            return Reply(rid, True, value=value)
        if isinstance(msg, LoadDeployment):
            dep = Deployment(msg.version, msg.bundle, msg.manifest)
            if not msg.validate_only:
                self.activate(dep)
            return Reply(rid, True)
        if isinstance(msg, Admin):
            from .admin import run_admin

            value = await run_admin(self, msg)
            return Reply(rid, True, value=value)
        raise TypeError(f"unexpected request {type(msg).__name__}")

    async def run_default(self, request: Request) -> Response:
        dep = self.deployment
        if dep is None or dep.default is None:
            return Response(
                "no Default entrypoint is deployed: add `class Default(WorkerEntrypoint)` to"
                " your main module, or reach objects through the SDK client",
                status=404,
            )
        entry = dep.default(EntrypointContext(self), self.env)
        try:
            response = await entry.fetch(request)
        except Exception as exc:
            return error_response(exc, self.debug)
        if not isinstance(response, Response):
            return error_response(
                TypeError(f"fetch must return a Response, not {type(response).__name__}"),
                self.debug,
            )
        return response


async def run_worker(fd: int, index: int, commit_log_fd: int = -1) -> None:
    import socket as _socket

    sock = trio.socket.from_stdlib_socket(_socket.socket(fileno=fd))
    stream = trio.SocketStream(sock)
    conn = FramedConnection(stream)
    worker = Worker(index, conn)
    if commit_log_fd >= 0:
        worker.commit_log = CommitLog(commit_log_fd)
    welcomed = False

    def setup(w: Welcome) -> None:
        """Apply the supervisor's `Welcome` before the reader looks at the next frame,
        so no request is ever served with the settings (data folder, shards) unset."""
        if w.index >= 0:
            worker.index = w.index  # a spare learns its slot here
        worker.settings = w.settings
        worker.debug = bool(w.settings.get("debug"))
        worker.data_dir = Path(w.settings["data_dir"])
        worker.shard_count = w.shard_count
        worker.committer.parallel = w.settings.get("durability", "full") == "full"
        trio.lowlevel.add_instrument(worker.committer)
        nursery = worker.nursery
        nursery.start_soon(worker.serve_evictions)
        worker.watchdog = Watchdog(worker, float(w.settings.get("cpu_limit", 30.0)))
        worker.watchdog.start(nursery)
        nursery.start_soon(worker.serve_stats)
        worker.sockets.start()
        worker.log(f"ready at {time.strftime('%H:%M:%S')}")

    def first(msg: Any) -> None:
        nonlocal welcomed
        if not welcomed:
            if not isinstance(msg, Welcome) or msg.version != PROTOCOL_VERSION:
                worker.log("bad handshake from supervisor; exiting")
                os._exit(2)
            welcomed = True
            setup(msg)
            return
        worker.on_message(msg)

    async with trio.open_nursery() as nursery:
        worker.nursery = nursery
        nursery.start_soon(conn.serve_writer)
        conn.send(Hello(PROTOCOL_VERSION, os.getpid(), index))

        async def reader() -> None:
            await conn.serve_reader(first)
            # Supervisor gone: leave at once (orphans never linger).
            os._exit(0)

        nursery.start_soon(reader)


__all__ = ["run_worker", "Worker", "WorkerCrashedError"]
