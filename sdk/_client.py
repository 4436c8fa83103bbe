"""The SDK client: deploy, call objects and read the admin API from outside the runtime.

`async with stateroom.connect(url, token=...) as client:` under trio (HTTP through
httpx, WebSockets through trio-websocket); `stateroom.connect_sync(...)` gives the
same methods, blocking, for scripts and notebooks (a trio loop in a helper thread).

Ids are computed on the client with the namespace secrets the runtime hands to
token holders, so `namespace(b).id_from_name(n)` equals the server's id.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import trio

from . import _codec
from ._bundle import payload_from_config_path, payload_from_keywords
from ._config import ConfigError
from ._errors import BindingNotFoundError, DeployError, DurableObjectError, error_from_fields
from ._http import Headers, Request, Response
from ._ids import IdFactory
from ._protocol import Target
from ._stub import DurableObjectNamespace, DurableObjectStub

__all__ = ["Client", "SyncClient", "connect", "connect_sync", "default_token", "default_url"]

_mp = msgspec.msgpack


def default_url() -> str:
    return os.environ.get("STATEROOM_URL") or "http://127.0.0.1:8787"


def default_token(data_dir: str | Path | None = None) -> str | None:
    env = os.environ.get("STATEROOM_TOKEN")
    if env:
        return env
    folder = Path(data_dir) if data_dir else Path(".stateroom")
    try:
        return (folder / "token").read_text().strip()
    except OSError:
        return None


def _object_key(target: Target) -> str:
    if target.name is not None:
        return "name:" + quote(target.name, safe="")
    return "id:" + target.id


class _HttpTransport:
    def __init__(self, client: Client, binding: str) -> None:
        self.client = client
        self.binding = binding

    async def fetch(self, target: Target, request: Request) -> Response:
        path = request.url.split("://", 1)[-1]
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
        url = f"/_stateroom/v1/fetch/{quote(self.binding, safe='')}/{_object_key(target)}{path}"
        headers = [
            (k, v) for k, v in request.headers.items() if k not in ("host", "content-length")
        ]
        r = await self.client._http.request(
            request.method, url, headers=headers, content=request.body
        )
        err = r.headers.get("x-stateroom-error")
        if err:
            raise error_from_fields(json.loads(err))
        return Response(
            r.content, status=r.status_code, headers=Headers(list(r.headers.multi_items()))
        )

    async def rpc(self, target: Target, method: str, args: bytes) -> Any:
        url = (
            f"/_stateroom/v1/rpc/{quote(self.binding, safe='')}/{_object_key(target)}/"
            f"{quote(method, safe='')}"
        )
        r = await self.client._http.post(url, content=args)
        return _sdk_result(r)

    @contextlib.asynccontextmanager
    async def web_socket(
        self, target: Target, path: str = "/", **kwargs: Any
    ) -> AsyncIterator[Any]:
        from trio_websocket import open_websocket_url

        base = self.client.url.replace("http://", "ws://").replace("https://", "wss://")
        if not path.startswith("/"):
            path = "/" + path
        url = (
            f"{base}/_stateroom/v1/fetch/{quote(self.binding, safe='')}/{_object_key(target)}{path}"
        )
        headers: list[tuple[bytes, bytes]] = []
        if self.client.token:
            headers.append((b"authorization", f"Bearer {self.client.token}".encode()))
        headers += kwargs.pop("extra_headers", None) or []
        async with open_websocket_url(url, extra_headers=headers, **kwargs) as ws:
            yield ws


def _sdk_result(r: httpx.Response) -> Any:
    if r.headers.get("content-type") != "application/x-stateroom":
        if r.status_code == 401:
            raise PermissionError(r.text.strip())
        if r.status_code == 404:
            raise BindingNotFoundError(r.text.strip())
        if r.status_code == 400:
            raise ValueError(r.text.strip())
        raise DurableObjectError(
            f"HTTP {r.status_code}: {r.text.strip()}", retryable=r.status_code == 503
        )
    body = _mp.decode(r.content)
    if body["ok"]:
        return _codec.decode(body["value"])
    raise error_from_fields(body["error"] or {})


class Client:
    """Async client. Create with `stateroom.connect(url, token=...)`."""

    def __init__(self, url: str, token: str | None, http: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = http
        # binding -> (class name, secret) as last read from the runtime.
        self._namespaces: dict[str, tuple[str, bytes]] = {}

    async def refresh(self) -> None:
        """Re-read bindings and id secrets (done at connect and after every deploy)."""
        data = await self._json("GET", "/_stateroom/v1/sdk/namespaces")
        self._namespaces = {
            n["binding"]: (n["class"], bytes.fromhex(n["secret"])) for n in data["namespaces"]
        }

    def namespace(self, binding: str) -> DurableObjectNamespace:
        """The namespace bound as `binding` in the current deployment."""
        ns = self._namespaces.get(binding)
        if ns is None:
            raise BindingNotFoundError(
                f"unknown binding {binding!r} (known: {sorted(self._namespaces)});"
                " deploy first, or call `await client.refresh()`"
            )
        return DurableObjectNamespace(
            binding, ns[0], IdFactory(ns[1]), _HttpTransport(self, binding)
        )

    def get_by_name(self, binding: str, name: str) -> DurableObjectStub:
        return self.namespace(binding).get_by_name(name)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = await self._http.request(method, path, **kwargs)
        if r.status_code == 401:
            raise PermissionError(f"{r.text.strip()} ({self.url})")
        return r

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self._request(method, path, **kwargs)
        if r.status_code == 404:
            raise BindingNotFoundError(r.text.strip())
        if r.status_code >= 400:
            raise _http_error(r)
        return r.json()

    async def deploy(
        self,
        config: str | Path | None = None,
        *,
        module: types.ModuleType | None = None,
        bindings: dict[str, str] | None = None,
        migrations: list[dict[str, Any]] | None = None,
        vars: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Deploy an app: a `stateroom.toml` path, or `module=` plus keywords.

        Raises `DeployError` with the runtime's message if the deploy is refused
        (the previous deployment keeps serving).
        """
        try:
            if config is not None:
                payload = payload_from_config_path(config)
            elif module is not None:
                payload = payload_from_keywords(module, bindings, migrations, vars)
            else:
                raise TypeError("deploy() needs a config path or module=")
        except ConfigError as exc:
            raise DeployError(str(exc)) from None
        r = await self._request(
            "POST",
            "/_stateroom/v1/deployments" + ("?dry_run=1" if dry_run else ""),
            content=_mp.encode(payload),
            headers={"content-type": "application/x-msgpack"},
        )
        if r.status_code != 200:
            raise DeployError(r.text.strip())
        result = r.json()
        if not dry_run:
            await self.refresh()
        return result

    async def deployments(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/_stateroom/v1/deployments"))["deployments"]

    async def rollback(self, version: int | None = None) -> dict[str, Any]:
        """Redeploy the code of `version` (default: the one before the current) as a
        new deployment. Raises `DeployError` naming the reason if that is refused."""
        body = {} if version is None else {"version": version}
        r = await self._request("POST", "/_stateroom/v1/rollback", json=body)
        if r.status_code != 200:
            raise DeployError(r.text.strip())
        result = r.json()
        await self.refresh()
        return result

    async def processes(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/_stateroom/v1/processes"))["processes"]

    async def billing(self, **params: Any) -> dict[str, Any]:
        q = {k: v for k, v in params.items() if v is not None}
        return await self._json("GET", "/_stateroom/v1/billing", params=q)

    async def namespaces(self) -> list[dict[str, Any]]:
        return (await self._json("GET", "/_stateroom/v1/namespaces"))["namespaces"]

    async def objects(self, binding: str) -> list[dict[str, Any]]:
        return (await self._json("GET", f"/_stateroom/v1/objects/{quote(binding, safe='')}"))[
            "objects"
        ]

    async def object_info(self, binding: str, object_id: str) -> dict[str, Any]:
        return await self._json(
            "GET", f"/_stateroom/v1/objects/{quote(binding, safe='')}/{object_id}"
        )

    async def delete_object(self, binding: str, object_id: str) -> None:
        r = await self._request(
            "DELETE", f"/_stateroom/v1/objects/{quote(binding, safe='')}/{object_id}"
        )
        if r.status_code != 204:
            raise _http_error(r)

    async def export_object(self, binding: str, object_id: str) -> bytes:
        r = await self._request(
            "GET", f"/_stateroom/v1/objects/{quote(binding, safe='')}/{object_id}/export"
        )
        if r.status_code != 200:
            raise _http_error(r)
        return r.content

    async def import_object(self, binding: str, object_id: str, data: bytes) -> None:
        r = await self._request(
            "PUT",
            f"/_stateroom/v1/objects/{quote(binding, safe='')}/{object_id}/import",
            content=data,
        )
        if r.status_code != 200:
            raise _http_error(r)

    async def inject(self, point: str, stub: DurableObjectStub, times: float = 1) -> dict[str, Any]:
        """Arm a crash point for the worker owning `stub`'s object (needs --fault-injection)."""
        body = {"point": point, "binding": stub._ns.binding, "id": str(stub.id), "times": times}
        return await self._json("POST", "/_stateroom/v1/faults", json=body)

    async def run_in_object(self, stub: DurableObjectStub, fn: Any) -> Any:
        """Run `fn(instance, ctx)` inside the object, as one of its events; its result.

        `fn` may be sync or async. It travels by value (cloudpickle, see `_probe`)
        and only the worker owning the object unpickles it. It runs in arrival order
        with the object's other events (constructing the object if needed), and its
        writes commit like any event's. The result must be a codec value; an
        exception raised by `fn` is raised here as for RPC.
        """
        from ._probe import pickle_by_value

        data = pickle_by_value(fn)
        r = await self._request(
            "POST",
            f"/_stateroom/v1/objects/{quote(stub._ns.binding, safe='')}/{stub.id}/run",
            content=data,
        )
        return _sdk_result(r)

    async def run_alarm(self, stub: DurableObjectStub) -> bool:
        """Run the object's alarm now, whatever its time, and wait for the handler.

        Returns True if an alarm was stored and its handler ran, False if the object
        has no alarm. Raises the handler's exception if it raised (the alarm then
        stays set and is retried like any failed alarm).
        """
        stub = getattr(stub, "_stub", stub)  # the sync facade's stub wraps an async one
        r = await self._request(
            "POST", f"/_stateroom/v1/objects/{quote(stub._ns.binding, safe='')}/{stub.id}/alarm/run"
        )
        if r.status_code != 200:
            raise _http_error(r)
        body = r.json()
        if body.get("error"):
            raise error_from_fields(body["error"])
        return bool(body["ran"])

    async def health(self) -> dict[str, Any]:
        r = await self._http.get("/_stateroom/health")
        return r.json()

    async def aclose(self) -> None:
        await self._http.aclose()


def _http_error(r: httpx.Response) -> Exception:
    text = r.text.strip()
    if r.status_code == 400:
        return ValueError(text)
    if r.status_code == 404:
        return LookupError(text)
    return DurableObjectError(f"HTTP {r.status_code}: {text}", retryable=r.status_code == 503)


@contextlib.asynccontextmanager
async def connect(
    url: str | None = None, token: str | None = None, *, timeout: float = 60.0
) -> AsyncIterator[Client]:
    """Connect to a runtime: `async with stateroom.connect(url, token=...) as client`."""
    url = (url or default_url()).rstrip("/")
    token = token if token is not None else default_token()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as http:
        client = Client(url, token, http)
        await client.refresh()
        yield client


class SyncClient:
    """Blocking facade over `Client` (a trio loop in a helper thread)."""

    def __init__(self, url: str | None, token: str | None, timeout: float) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, url, token, timeout), daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _main(self, url: str | None, token: str | None, timeout: float) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with connect(url, token, timeout=timeout) as client:
                self._client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the constructing thread
            self._error = exc
            self._ready.set()

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    def namespace(self, binding: str) -> _SyncNamespace:
        assert self._client is not None
        return _SyncNamespace(self, self._client.namespace(binding))

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(5)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if callable(attr) and _is_async(attr):
            return lambda *a, **k: self._run(attr, *a, **k)
        return attr


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


class _SyncNamespace:
    def __init__(self, sync: SyncClient, ns: DurableObjectNamespace) -> None:
        self._sync = sync
        self._ns = ns

    def get_by_name(self, name: str) -> _SyncStub:
        return _SyncStub(self._sync, self._ns.get_by_name(name))

    def get(self, object_id: Any) -> _SyncStub:
        return _SyncStub(self._sync, self._ns.get(object_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ns, name)


class _SyncStub:
    def __init__(self, sync: SyncClient, stub: DurableObjectStub) -> None:
        self._sync = sync
        self._stub = stub
        self.id = stub.id

    @property
    def name(self) -> str | None:
        return self._stub.name

    def fetch(self, *args: Any, **kwargs: Any) -> Response:
        return self._sync._run(self._stub.fetch, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda *a, **k: self._sync._run(method, *a, **k)


def connect_sync(
    url: str | None = None, token: str | None = None, *, timeout: float = 60.0
) -> SyncClient:
    """Blocking client for scripts and notebooks; call `.close()` (or use `with`)."""
    return SyncClient(url, token, timeout)
