"""The supervisor: one trio process that owns the port, the workers and the data folder.

It never imports or unpickles user code. It routes every app request to a worker
(`Default` runs on any worker) and every object call to the worker owning the
object's shard; it serves the reserved prefix `/_stateroom/` (SDK, admin API) itself.

Affinity: `Default` usually calls one object per path (`/room/42` -> room 42). When
a `Default.fetch` calls an object that another worker owns, the supervisor notes
that worker for the request's URL path (`_affinity`, the most recent
`AFFINITY_PATHS` paths), and sends the next request for the path there, so the call
is local (no relay through the supervisor). A path with no note, or whose noted
worker is not ready, goes round-robin. The note is only a hint: any worker can run
`Default` correctly.

Request path: front door (`front.py`) -> `Supervisor.handle` -> auth -> route ->
`WorkerPool.request` (framed message over the worker's Unix socket) -> worker ->
`Reply` -> HTTP response.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
import trio

from stateroom import _codec
from stateroom._errors import (
    BindingNotFoundError,
    DurableObjectError,
    WorkerCrashedError,
    error_to_fields,
)
from stateroom._ids import IdFactory, is_id_string
from stateroom._protocol import (
    Call,
    CallReply,
    Fetch,
    HttpRequest,
    HttpResponse,
    LoadDeployment,
    Rpc,
    Target,
    shard_of,
)

from . import deployments as deps
from .front import HttpServer
from .processes import ProcessSampler
from .runtime_db import RuntimeDB
from .settings import Settings
from .workers import WorkerPool, WorkerProc, WorkerState

PREFIX = "/_stateroom/"
# App paths whose affinity (the worker `Default` should run on) is remembered.
AFFINITY_PATHS = 4096
SDK_CONTENT_TYPE = "application/x-stateroom"


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def json_response(obj: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json")], json.dumps(obj).encode())


def text_response(text: str, status: int) -> HttpResponse:
    return HttpResponse(
        status, [("content-type", "text/plain; charset=utf-8")], (text + "\n").encode()
    )


def error_http(exc: BaseException) -> HttpResponse:
    """HTTP form of a runtime error: 503 + Retry-After when retryable/overloaded, else 500."""
    if isinstance(exc, BindingNotFoundError):
        return text_response(str(exc), 404)
    if isinstance(exc, DurableObjectError):
        if exc.retryable or exc.overloaded:
            return HttpResponse(
                503,
                [("content-type", "text/plain; charset=utf-8"), ("retry-after", "1")],
                f"{type(exc).__name__}: {exc}\n".encode(),
            )
        return text_response(f"{type(exc).__name__}: {exc}", 500)
    return text_response(f"{type(exc).__name__}: {exc}", 500)


def load_token(settings: Settings) -> str:
    if settings.token:
        return settings.token
    env = os.environ.get("STATEROOM_TOKEN")
    if env:
        return env
    path = settings.data / "token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data.mkdir(parents=True, exist_ok=True)
        self.data_dir = settings.data.resolve()
        self.db = RuntimeDB(self.data_dir / "runtime.sqlite")
        self.token = load_token(settings)
        self.started = time.time()
        self.pool = WorkerPool(
            settings.workers,
            settings.shards,
            settings.worker_settings(),
            self.on_worker_message,
            self.on_worker_ready,
        )
        # Current deployment: {"version", "config", "manifest"} or None.
        self.current: dict[str, Any] | None = None
        # binding -> (class, ns_key, IdFactory); rebuilt on every deploy.
        self.bindings: dict[str, tuple[str, int, IdFactory]] = {}
        # (ns_key, id) already recorded in the names table (avoids repeated writes).
        self._named: set[tuple[int, str]] = set()
        self._rr = 0
        # URL path -> index of the worker owning the object that the last
        # `Default.fetch` on that path called in another worker; least recently used
        # first, at most AFFINITY_PATHS entries. Set when such a `Call` arrives.
        self._affinity: OrderedDict[str, int] = OrderedDict()
        self.deploy_lock = trio.Lock()
        self.http = HttpServer(self.handle, max_body_bytes=settings.max_body_bytes)
        self.nursery: trio.Nursery | None = None
        # CPU/memory of the supervisor and its workers (see processes.py).
        self.sampler = ProcessSampler(
            lambda: [os.getpid(), *(w.pid for w in self.pool.workers if w.pid is not None)]
        )
        self.extensions: list[Any] = []
        deps.sweep_leftovers(self.db, self.data_dir)
        latest = self.db.latest_deployment()
        if latest is not None:
            self._set_current(latest)

    # ------------------------------------------------------------------ deployments

    def _set_current(self, dep: dict[str, Any]) -> None:
        self.current = dep
        manifest = dep["manifest"]
        bindings = {}
        for binding, class_name in manifest["bindings"].items():
            key, secret_hex = manifest["namespaces"][class_name]
            bindings[binding] = (class_name, int(key), IdFactory(bytes.fromhex(secret_hex)))
        self.bindings = bindings

    async def on_worker_ready(self, w: WorkerProc) -> None:
        dep = self.current
        if dep is None:
            return
        bundle = deps.read_bundle(self.data_dir, dep["version"])
        rid = self.pool.next_request_id()
        p = __import__("stateroom.supervisor.workers", fromlist=["Pending"]).Pending()
        w.pending[rid] = p
        assert w.conn is not None
        w.conn.send(LoadDeployment(rid, dep["version"], bundle, dep["manifest"]))
        await p.event.wait()
        if p.reply is None or not p.reply.ok:
            err = p.reply.error if p.reply is not None else p.error
            print(
                f"stateroom: worker {w.index} could not load deployment {dep['version']}: {err}",
                file=sys.stderr,
                flush=True,
            )
        for ext in self.extensions:
            hook = getattr(ext, "on_worker_ready", None)
            if hook is not None:
                await hook(w)

    async def deploy(
        self, payload: Any, *, dry_run: bool = False, note: str = ""
    ) -> dict[str, Any]:
        """Validate, record and activate a deployment (see `deployments.py` for the steps).

        Raises `DeployRefused` (HTTP 400) with nothing changed when the request,
        its migrations or its code are refused.
        """
        async with self.deploy_lock:
            config, meta, bundle = deps.validate_request(payload)
            plan = deps.plan_migrations(self.db, self.data_dir, config, meta["classes"])
            version = self.db.next_version()
            await self._validate_code(version, bundle, config, meta, plan)
            if dry_run:
                return {
                    "dry_run": True,
                    "version": version,
                    "plan": plan,
                    "bindings": config["bindings"],
                }
            doomed = deps.commit_deployment(
                self.db, self.data_dir, version, bundle, plan, config, meta, note
            )
            dep = self.db.deployment(version)
            assert dep is not None
            # Workers switch first (renamed classes answer to both names meanwhile),
            # then requests route by the new bindings; deleted classes' files go last,
            # once no worker holds them open.
            results = await self.pool.broadcast(
                lambda rid: LoadDeployment(rid, version, bundle, dep["manifest"])
            )
            self._set_current(dep)
            self._named.clear()
            deps.remove_folders(doomed)
            failed = [r for r in results if isinstance(r, BaseException) or not r.ok]
            for ext in self.extensions:
                hook = getattr(ext, "on_deploy", None)
                if hook is not None:
                    await hook(dep, plan)
            return {
                "version": version,
                "applied": plan["apply"],
                "plan": plan,
                "workers_failed": len(failed),
            }

    async def _validate_code(
        self, version: int, bundle: bytes, config: dict, meta: dict, plan: dict
    ) -> None:
        """Have worker 0 unpickle the bundle without activating it; refuse on any error."""
        manifest = {
            "bindings": config["bindings"],
            "vars": config["vars"],
            "namespaces": deps.tentative_namespaces(self.db, plan),
            "classes": meta["classes"],
            "has_default": meta["has_default"],
        }
        try:
            reply = await self.pool.request(
                self.pool.workers[0],
                lambda rid: LoadDeployment(rid, version, bundle, manifest, validate_only=True),
                wait_ready=30,
            )
        except WorkerCrashedError as exc:
            raise deps.DeployRefused(f"the worker crashed while loading the code: {exc}") from None
        if not reply.ok:
            raise deps.DeployRefused((reply.error or {}).get("message", "deployment failed"))

    # ------------------------------------------------------------------ routing objects

    def resolve(self, binding: str) -> tuple[str, int, IdFactory]:
        b = self.bindings.get(binding)
        if b is None:
            raise BindingNotFoundError(f"unknown binding {binding!r}")
        return b

    def target_for(
        self, binding: str, *, name: str | None = None, object_id: str | None = None
    ) -> Target:
        class_name, ns_key, factory = self.resolve(binding)
        if name is not None:
            oid = factory.from_name(name)
            self.note_name(ns_key, str(oid), name)
            return Target(class_name, str(oid), name)
        assert object_id is not None
        try:
            factory.from_string(object_id)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, f"bad object id: {exc}") from None
        return Target(class_name, object_id, self.known_name(ns_key, object_id))

    def ns_key_of_class(self, class_name: str) -> int | None:
        for c, k, _ in self.bindings.values():
            if c == class_name:
                return k
        ns = self.db.namespaces().get(class_name)
        return ns[0] if ns else None

    def note_name(self, ns_key: int, object_id: str, name: str) -> None:
        key = (ns_key, object_id)
        if key not in self._named:
            self._named.add(key)
            self.db.record_name(ns_key, object_id, name)

    def known_name(self, ns_key: int, object_id: str) -> str | None:
        return self.db.name_of(ns_key, object_id)

    def owner(self, target: Target) -> WorkerProc:
        return self.pool.owner_of_shard(shard_of(target.id, self.pool.shard_count))

    async def call_object(self, msg_factory: Any, target: Target, parent: Any = None) -> Any:
        reply = await self.pool.request(self.owner(target), msg_factory, parent=parent)
        return reply

    def on_worker_message(self, w: WorkerProc, msg: Any) -> None:
        if isinstance(msg, Call):
            assert self.nursery is not None
            # The request the call is made for: in flight until the relay ends, so
            # the caller's crash meanwhile is not retryable (see workers.py).
            parent = w.pending.get(msg.origin) if msg.origin else None
            if parent is not None:
                parent.children += 1
                if parent.path is not None and is_id_string(msg.target.id):
                    self._note_affinity(parent.path, self.owner(msg.target).index)
            self.nursery.start_soon(self._relay_call, w, msg, parent)
            return
        for ext in self.extensions:
            handler = getattr(ext, "on_worker_message", None)
            if handler is not None and handler(w, msg):
                return

    async def _relay_call(self, w: WorkerProc, msg: Call, parent: Any = None) -> None:
        """A worker's stub call to an object owned by another worker."""
        target = msg.target
        try:
            if target.name is not None:
                ns_key = self.ns_key_of_class(target.class_name)
                if ns_key is not None:
                    self.note_name(ns_key, target.id, target.name)
            if msg.kind == "fetch":
                assert msg.request is not None
                reply = await self.call_object(
                    lambda rid: Fetch(rid, msg.request, target), target, parent
                )
            else:
                reply = await self.call_object(
                    lambda rid: Rpc(rid, target, msg.method, msg.args), target, parent
                )
            out = CallReply(msg.request_id, reply.ok, reply.response, reply.value, reply.error)
        except Exception as exc:  # noqa: BLE001 - becomes the caller's error
            out = CallReply(msg.request_id, False, error=error_to_fields(exc))
        finally:
            if parent is not None:
                parent.children -= 1
        if w.conn is not None and not w.conn.closed:
            try:
                w.conn.send(out)
            except trio.ClosedResourceError:
                pass

    # ------------------------------------------------------------------ HTTP

    async def handle(self, request: HttpRequest, _: Any) -> HttpResponse:
        path = urlsplit(request.url).path
        if path.startswith(PREFIX) or path == PREFIX.rstrip("/"):
            try:
                return await self.handle_reserved(request, path)
            except HttpError as exc:
                resp = text_response(exc.message, exc.status)
                return HttpResponse(resp.status, resp.headers + exc.headers, resp.body)
            except deps.DeployRefused as exc:
                return text_response(f"deploy refused: {exc}", 400)
            except DurableObjectError as exc:
                return error_http(exc)
        return await self.handle_app(request, path)

    def _note_affinity(self, path: str, index: int) -> None:
        affinity = self._affinity
        affinity[path] = index
        affinity.move_to_end(path)
        if len(affinity) > AFFINITY_PATHS:
            affinity.popitem(last=False)

    def worker_for_path(self, path: str) -> WorkerProc:
        """The worker to run `Default` for an app request on `path` (see Affinity)."""
        index = self._affinity.get(path)
        if index is not None:
            w = self.pool.workers[index]
            if w.state is WorkerState.READY:
                self._affinity.move_to_end(path)
                return w
        self._rr = (self._rr + 1) % self.pool.count
        return self.pool.workers[self._rr]

    async def handle_app(self, request: HttpRequest, path: str) -> HttpResponse:
        if self.current is None:
            return text_response(
                "no app is deployed yet: run `stateroom deploy path/to/stateroom.toml`", 404
            )
        if not self.current["manifest"].get("has_default"):
            return text_response(
                "this app has no Default entrypoint: add `class Default(WorkerEntrypoint)` to"
                " the main module, or call objects through the SDK client",
                404,
            )
        w = self.worker_for_path(path)
        try:
            reply = await self.pool.request(w, lambda rid: Fetch(rid, request), path=path)
        except DurableObjectError as exc:
            return error_http(exc)
        if not reply.ok:
            from stateroom._errors import error_from_fields

            return error_http(error_from_fields(reply.error or {}))
        assert reply.response is not None
        return reply.response

    def authorized(self, request: HttpRequest) -> bool:
        given = None
        for k, v in request.headers:
            if k.lower() == "authorization" and v.startswith("Bearer "):
                given = v[7:].strip()
                break
        if given is None:
            for k, v in request.headers:
                if k.lower() == "cookie":
                    for part in v.split(";"):
                        name, _, value = part.strip().partition("=")
                        if name == "stateroom_token":
                            given = value
        if given is None:
            query = dict(parse_qsl(urlsplit(request.url).query))
            if urlsplit(request.url).path.startswith(PREFIX + "dashboard"):
                given = query.get("token")
        if given is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def handle_reserved(self, request: HttpRequest, path: str) -> HttpResponse:
        if path == PREFIX + "health":
            return json_response(
                {"ok": True, "deployment": self.current["version"] if self.current else None}
            )
        for ext in self.extensions:
            pre = getattr(ext, "public_route", None)
            if pre is not None:
                resp = await pre(request, path)
                if resp is not None:
                    return resp
        if not self.authorized(request):
            return HttpResponse(
                401,
                [("content-type", "text/plain; charset=utf-8"), ("www-authenticate", "Bearer")],
                b"missing or wrong token (Authorization: Bearer <token>)\n",
            )
        from .admin import route

        return await route(self, request, path[len(PREFIX) :])

    # ------------------------------------------------------------------ processes

    def processes(self) -> list[dict[str, Any]]:
        """SPEC §12 figures of the supervisor and every worker (units: %, s, bytes)."""
        now = time.time()
        me = self.sampler.sample(os.getpid())
        out = [
            {
                "pid": os.getpid(),
                "role": "supervisor",
                "shards": [],
                "cpu_percent": me.cpu_percent,
                "cpu_seconds": me.cpu_seconds,
                "rss_bytes": me.rss_bytes,
                "objects_active": 0,
                "sockets_parked": self.sockets_parked(),
                "restarts": 0,
                "uptime_s": round(now - self.started, 3),
            }
        ]
        for w in self.pool.workers:
            s = self.sampler.sample(w.pid)
            out.append(
                {
                    "pid": w.pid,
                    "role": "worker",
                    "index": w.index,
                    "state": w.state.value,
                    "shards": self.pool.shards_of(w.index),
                    "cpu_percent": s.cpu_percent,
                    "cpu_seconds": s.cpu_seconds,
                    "rss_bytes": s.rss_bytes,
                    "objects_active": w.objects_active,
                    "sockets_parked": self.sockets_parked(w.index),
                    "restarts": w.restarts,
                    "uptime_s": round(now - w.started_at, 3),
                }
            )
        return out

    def sockets_parked(self, worker_index: int | None = None) -> int:
        for ext in self.extensions:
            fn = getattr(ext, "sockets_parked", None)
            if fn is not None:
                return int(fn(worker_index))
        return 0

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.pool.serve)
            await nursery.start(self.sampler.serve)
            for ext in self.extensions:
                start = getattr(ext, "serve", None)
                if start is not None:
                    await nursery.start(start)
            listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
            port = listeners[0].socket.getsockname()[1]
            self.port = port
            nursery.start_soon(trio.serve_listeners, self.http.serve_connection, listeners)
            nursery.start_soon(self._watch_signals, nursery)
            # One write(2) so the line never interleaves with workers' output.
            sys.stdout.flush()
            os.write(1, f"stateroom listening on http://{self.settings.host}:{port}\n".encode())
            task_status.started(port)

    async def _watch_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        print("stateroom: shutting down", file=sys.stderr, flush=True)
        with trio.CancelScope(shield=True):
            for ext in self.extensions:
                stop = getattr(ext, "stop", None)
                if stop is not None:
                    try:
                        await stop()
                    except Exception as exc:  # noqa: BLE001
                        print(f"stateroom: shutdown hook failed: {exc!r}", file=sys.stderr)
            await self.pool.stop(self.settings.shutdown_grace)
        nursery.cancel_scope.cancel()


def split_key(key: str) -> tuple[str | None, str | None]:
    """`id:<hex>` / `name:<name>` / bare 64-hex id / anything else a name."""
    key = unquote(key)
    if key.startswith("id:"):
        return None, key[3:]
    if key.startswith("name:"):
        return key[5:], None
    if is_id_string(key):
        return None, key
    return key, None


__all__ = ["Supervisor", "HttpError", "SDK_CONTENT_TYPE", "msgspec", "_codec"]
