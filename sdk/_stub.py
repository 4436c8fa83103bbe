"""Namespaces and stubs: how code addresses an object, inside or outside the runtime.

A `DurableObjectNamespace` makes ids (see `_ids`) and `DurableObjectStub`s for one
class. A stub forwards `fetch` and RPC calls through a *transport*: inside a worker
the transport delivers locally or through the supervisor; in the SDK client it is
HTTP to the supervisor. Stubs themselves do no I/O, so the same classes serve both.

Invariant: RPC arguments are encoded with the value codec before the transport is
touched, so an unsupported type raises `TypeError` and nothing is sent.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import _codec
from ._http import Request, Response
from ._ids import DurableObjectId, IdFactory
from ._object import HANDLER_NAMES
from ._protocol import Target

__all__ = ["DurableObjectNamespace", "DurableObjectStub", "Transport"]


class Transport(Protocol):
    async def fetch(self, target: Target, request: Request) -> Response: ...

    async def rpc(self, target: Target, method: str, args: bytes) -> Any: ...


def build_request(
    request_or_url: Request | str,
    *,
    method: str = "GET",
    headers: Any = None,
    body: Any = None,
) -> Request:
    if isinstance(request_or_url, Request):
        if headers is None and body is None and method == "GET":
            return request_or_url
        return Request(
            request_or_url.url,
            method=method if method != "GET" else request_or_url.method,
            headers=headers if headers is not None else request_or_url.headers,
            body=body if body is not None else request_or_url.body,
        )
    if not isinstance(request_or_url, str):
        raise TypeError(
            f"fetch takes a Request or a URL string, not {type(request_or_url).__name__}"
        )
    url = request_or_url
    if url.startswith("/"):
        url = "http://do" + url
    elif "://" not in url:
        url = "http://do/" + url
    return Request(url, method=method, headers=headers, body=body)


class DurableObjectStub:
    """A handle to one object: `await stub.fetch(...)`, `await stub.method(*args)`."""

    __slots__ = ("_ns", "id", "_target")

    def __init__(self, ns: DurableObjectNamespace, object_id: DurableObjectId) -> None:
        self._ns = ns
        self.id = object_id
        self._target = Target(ns.class_name, str(object_id), object_id.name)

    @property
    def name(self) -> str | None:
        return self.id.name

    async def fetch(
        self,
        request_or_url: Request | str,
        *,
        method: str = "GET",
        headers: Any = None,
        body: Any = None,
    ) -> Response:
        """Send an HTTP request to the object's `fetch` handler.

        An exception in the object's `fetch` comes back as a 500 `Response`;
        runtime failures (reset, crash, overload) raise `DurableObjectError`.
        """
        request = build_request(request_or_url, method=method, headers=headers, body=body)
        return await self._ns._transport.fetch(self._target, request)

    async def _rpc(self, method: str, args: tuple, kwargs: dict) -> Any:
        payload = _codec.encode((tuple(args), dict(kwargs)))
        return await self._ns._transport.rpc(self._target, method, payload)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in HANDLER_NAMES:
            raise AttributeError(f"{name!r} is not callable over RPC")

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._rpc(name, args, kwargs)

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self._ns.binding} {self.id!r}>"


class DurableObjectNamespace:
    """The ids and stubs of one class, reached through one binding."""

    def __init__(
        self,
        binding: str,
        class_name: str,
        factory: IdFactory | None,
        transport: Transport,
    ) -> None:
        self.binding = binding
        self.class_name = class_name
        self._factory = factory
        self._transport = transport

    def _require_factory(self) -> IdFactory:
        if self._factory is None:
            raise RuntimeError(
                f"namespace {self.binding!r} is not deployed yet (no id secret known)"
            )
        return self._factory

    def id_from_name(self, name: str) -> DurableObjectId:
        """The id for `name`: the same for this namespace forever, different elsewhere."""
        return self._require_factory().from_name(name)

    def new_unique_id(self) -> DurableObjectId:
        return self._require_factory().unique()

    def id_from_string(self, s: str) -> DurableObjectId:
        """Parse an id of this namespace; `ValueError` for malformed or foreign ids."""
        return self._require_factory().from_string(s)

    def get(self, object_id: DurableObjectId | str) -> DurableObjectStub:
        if isinstance(object_id, str):
            object_id = self.id_from_string(object_id)
        elif not isinstance(object_id, DurableObjectId):
            raise TypeError(f"get() takes a DurableObjectId, not {type(object_id).__name__}")
        elif not self._require_factory().verifies(str(object_id)):
            raise ValueError("object id does not belong to this namespace")
        return DurableObjectStub(self, object_id)

    def get_by_name(self, name: str) -> DurableObjectStub:
        return DurableObjectStub(self, self.id_from_name(name))

    def __repr__(self) -> str:
        return f"<DurableObjectNamespace {self.binding} -> {self.class_name}>"


def _web_socket(self: DurableObjectStub, path: str = "/", **kwargs: Any) -> Any:
    """Open a WebSocket to the object (SDK client only): `async with stub.web_socket("/ws")`."""
    opener = getattr(self._ns._transport, "web_socket", None)
    if opener is None:
        raise RuntimeError("web_socket() is available on SDK client stubs only")
    return opener(self._target, path, **kwargs)


DurableObjectStub.web_socket = _web_socket  # type: ignore[attr-defined]
