"""HTTP value types shared by user code, workers and the supervisor.

``MultiDict``
    An ordered, read-only multi-mapping of ``str -> str`` built from ``(name, value)``
    pairs. Repeated names keep every value in arrival order and values are never joined:
    ``get(name)`` / ``md[name]`` give the first value, ``get_all(name)`` gives all of
    them, iteration yields each distinct name once (first-seen order) and ``items()``
    yields every pair, repeats included.

``Headers``
    A ``MultiDict`` whose names are case-insensitive. Names are stored lowercased, so
    iteration and ``items()`` yield lowercase names, while values keep their case. Names
    and values given as bytes are decoded as latin-1 (the HTTP/1.1 wire encoding).
    Names must be non-empty and neither names nor values may contain CR, LF or NUL,
    which rules out header injection by construction.

``Request``
    ``method`` (upper-case), ``url`` (always absolute; a bare path such as ``/a?x=1`` is
    prefixed with ``http://localhost``), ``url_path`` (percent-decoded path, ``/`` when
    empty), ``query`` (``MultiDict`` of the percent-decoded query string, blank values
    kept, repeats in order), ``headers`` (``Headers``) and ``body`` (``bytes``; a ``str``
    body is UTF-8 encoded). ``await text()`` and ``await json()`` read the body.

``Response``
    ``Response(body=None, *, status=200, headers=None, web_socket=None)`` with
    ``status`` an ``int`` in 101..599 (101 only together with ``web_socket``), ``headers``
    (``Headers``), ``body`` (``bytes``) and ``web_socket`` (stored as given). A ``str``
    body is UTF-8 encoded and, unless a content-type was given, gets
    ``content-type: text/plain; charset=utf-8``. ``Response.json(obj, status=200,
    headers=None)`` builds a JSON response, while ``await response.json()`` on an
    instance parses the body.

``text()`` decodes UTF-8, replacing invalid sequences (like the fetch API); ``json()``
parses the body with ``json.loads``. Only the standard library is used.
"""

from __future__ import annotations

import json as _json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["Headers", "MultiDict", "Request", "Response"]

#: Anything a ``MultiDict``/``Headers`` can be built from.
PairsInit: TypeAlias = "MultiDict | Mapping[Any, Any] | Iterable[tuple[Any, Any]] | None"
BodyInit: TypeAlias = str | bytes | bytearray | memoryview | None


class MultiDict:
    """Ordered, read-only multi-mapping of ``str -> str``; repeated values are kept apart."""

    __slots__ = ("_pairs", "_index")

    _pairs: list[tuple[str, str]]
    _index: dict[str, list[str]]

    def __init__(self, pairs: PairsInit = None) -> None:
        collected: list[tuple[str, str]] = []
        index: dict[str, list[str]] = {}
        for raw_name, raw_value in self._iter_init(pairs):
            name = self._norm_name(self._coerce(raw_name, "name"))
            value = self._check_value(self._coerce(raw_value, "value"))
            collected.append((name, value))
            index.setdefault(name, []).append(value)
        self._pairs = collected
        self._index = index

    # -- construction helpers (overridden by Headers) -------------------------------

    @staticmethod
    def _iter_init(pairs: PairsInit) -> Iterator[tuple[Any, Any]]:
        if pairs is None:
            return
        if isinstance(pairs, MultiDict):
            yield from pairs.items()
            return
        if isinstance(pairs, Mapping):
            for name, value in pairs.items():
                if isinstance(value, list | tuple):
                    for item in value:
                        yield name, item
                else:
                    yield name, value
            return
        if isinstance(pairs, str | bytes | bytearray | memoryview):
            raise TypeError(f"expected pairs, a mapping or None, not {type(pairs).__name__}")
        for pair in pairs:
            if isinstance(pair, str | bytes | bytearray | memoryview):
                raise TypeError(f"expected a (name, value) pair, not {type(pair).__name__}")
            try:
                name, value = pair
            except (TypeError, ValueError):
                raise ValueError(f"expected a (name, value) pair, got {pair!r}") from None
            yield name, value

    def _decode(self, raw: bytes | bytearray | memoryview) -> str:
        return bytes(raw).decode("utf-8")

    def _coerce(self, raw: object, what: str) -> str:
        if isinstance(raw, str):
            return raw
        if isinstance(raw, bytes | bytearray | memoryview):
            return self._decode(raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and what == "value":
            return str(raw)
        raise TypeError(
            f"{type(self).__name__} {what} must be str or bytes, not {type(raw).__name__}"
        )

    def _norm_name(self, name: str) -> str:
        return name

    def _check_value(self, value: str) -> str:
        return value

    # -- read API -------------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        """Return the first value for ``name``, or ``default`` when absent."""
        values = self._lookup(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Return every value for ``name`` in order (``[]`` when absent)."""
        return list(self._lookup(name))

    def _lookup(self, name: object) -> list[str]:
        if not isinstance(name, str):
            return []
        return self._index.get(self._norm_name(name), [])

    def __getitem__(self, name: str) -> str:
        values = self._lookup(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return bool(self._lookup(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[str]:
        """Distinct names in first-seen order."""
        return list(self._index)

    def items(self) -> Iterator[tuple[str, str]]:
        """Every ``(name, value)`` pair in order, repeats included."""
        return iter(self._pairs)

    def to_list(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair as a new list."""
        return list(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MultiDict):
            return NotImplemented
        return type(self) is type(other) and self._pairs == other._pairs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._pairs!r})"


_FORBIDDEN = ("\r", "\n", "\0")


class Headers(MultiDict):
    """HTTP header multi-mapping: case-insensitive names (stored lowercase), latin-1 bytes."""

    __slots__ = ()

    def _decode(self, raw: bytes | bytearray | memoryview) -> str:
        return bytes(raw).decode("latin-1")

    def _norm_name(self, name: str) -> str:
        return name.lower()

    @classmethod
    def trusted(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers from pairs the runtime already checked (a wire record): names are
        lowercased, values taken as they are. Not for user input."""
        self = cls.__new__(cls)
        collected = [(name.lower(), value) for name, value in pairs]
        index: dict[str, list[str]] = {}
        for name, value in collected:
            index.setdefault(name, []).append(value)
        self._pairs = collected
        self._index = index
        return self

    def _coerce(self, raw: object, what: str) -> str:
        text = super()._coerce(raw, what)
        if what == "name" and not text:
            raise ValueError("header name must not be empty")
        if any(ch in text for ch in _FORBIDDEN):
            raise ValueError(f"header {what} must not contain CR, LF or NUL: {text!r}")
        return text


def _to_bytes(body: BodyInit, owner: str) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError(
        f"{owner} body must be str, bytes, bytearray, memoryview or None, not {type(body).__name__}"
    )


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class Request:
    """An HTTP request as seen by ``fetch`` handlers and passed to ``stub.fetch``."""

    method: str
    url: str
    url_path: str
    query: MultiDict
    headers: Headers
    body: bytes

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: PairsInit = None,
        body: BodyInit = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"Request url must be str, not {type(url).__name__}")
        if not isinstance(method, str):
            raise TypeError(f"Request method must be str, not {type(method).__name__}")
        method = method.upper()
        if not method or not set(method) <= _TOKEN_CHARS:
            raise ValueError(f"invalid HTTP method: {method!r}")
        parts = urlsplit(url)
        if not parts.scheme and not parts.netloc:
            url = "http://localhost" + ("" if url.startswith("/") else "/") + url
            parts = urlsplit(url)
        self.method = method
        self.url = url
        self.url_path = unquote(parts.path) or "/"
        self.query = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = _to_bytes(body, "Request")

    async def text(self) -> str:
        """The body decoded as UTF-8 (invalid sequences replaced)."""
        return _text(self.body)

    async def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url!r} body={len(self.body)}B>"


class _JsonAccessor:
    """``Response.json(obj)`` on the class builds a response; ``await r.json()`` parses."""

    def __get__(self, instance: Response | None, owner: type[Response]) -> Callable[..., Any]:
        if instance is None:
            return owner._from_json
        return instance._parse_json


class Response:
    """An HTTP response returned by ``fetch`` handlers (or a WebSocket accept, status 101)."""

    status: int
    headers: Headers
    body: bytes
    web_socket: Any

    def __init__(
        self,
        body: BodyInit = None,
        *,
        status: int = 200,
        headers: PairsInit = None,
        web_socket: Any = None,
    ) -> None:
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"Response status must be int, not {type(status).__name__}")
        status = int(status)
        if not 101 <= status <= 599:
            raise ValueError(f"Response status must be in 101..599, got {status}")
        if status == 101 and web_socket is None:
            raise ValueError("Response status 101 requires web_socket")
        hdrs = Headers(headers)
        if isinstance(body, str) and "content-type" not in hdrs:
            hdrs = Headers([*hdrs.items(), ("content-type", "text/plain; charset=utf-8")])
        self.status = status
        self.headers = hdrs
        self.body = _to_bytes(body, "Response")
        self.web_socket = web_socket

    json = _JsonAccessor()

    @classmethod
    def _from_json(cls, obj: Any, status: int = 200, headers: PairsInit = None) -> Response:
        """Build a response whose body is ``obj`` as compact JSON (NaN/inf rejected)."""
        body = _json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        hdrs = Headers(headers)
        if "content-type" not in hdrs:
            hdrs = Headers([*hdrs.items(), ("content-type", "application/json")])
        return cls(body.encode("utf-8"), status=status, headers=hdrs)

    async def _parse_json(self) -> Any:
        return _json.loads(self.body)

    async def text(self) -> str:
        """The body decoded as UTF-8 (invalid sequences replaced)."""
        return _text(self.body)

    def __repr__(self) -> str:
        ws = " web_socket" if self.web_socket is not None else ""
        return f"<Response {self.status} body={len(self.body)}B{ws}>"
