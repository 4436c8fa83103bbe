"""Unit tests for stateroom._http: MultiDict, Headers, Request, Response (SPEC §4)."""

from __future__ import annotations

import json

import pytest

from stateroom._http import Headers, MultiDict, Request, Response

# -- MultiDict ------------------------------------------------------------------------


def test_multidict_keeps_repeats_in_order() -> None:
    md = MultiDict([("a", "1"), ("b", "2"), ("a", "3")])
    assert md.get("a") == "1"
    assert md["a"] == "1"
    assert md.get_all("a") == ["1", "3"]
    assert md.get_all("missing") == []
    assert md.get("missing") is None
    assert md.get("missing", "dflt") == "dflt"
    assert list(md) == ["a", "b"]
    assert len(md) == 2
    assert list(md.items()) == [("a", "1"), ("b", "2"), ("a", "3")]
    assert md.to_list() == [("a", "1"), ("b", "2"), ("a", "3")]
    assert "a" in md and "missing" not in md
    with pytest.raises(KeyError):
        md["missing"]


def test_multidict_is_case_sensitive_and_repr() -> None:
    md = MultiDict([("A", "1")])
    assert "a" not in md
    assert md.get("A") == "1"
    assert repr(md) == "MultiDict([('A', '1')])"


def test_multidict_to_list_is_a_copy() -> None:
    md = MultiDict([("a", "1")])
    md.to_list().append(("b", "2"))
    assert md.to_list() == [("a", "1")]


def test_multidict_from_dict_and_empty() -> None:
    assert MultiDict({"a": "1", "b": ["2", "3"]}).to_list() == [("a", "1"), ("b", "2"), ("b", "3")]
    assert len(MultiDict()) == 0
    assert MultiDict(None).to_list() == []


def test_multidict_rejects_bad_pairs() -> None:
    with pytest.raises(ValueError):
        MultiDict([("a", "1", "x")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        MultiDict("ab")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MultiDict([("a", None)])


# -- Headers --------------------------------------------------------------------------


def test_headers_multi_values_never_joined() -> None:
    h = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2, c=3"), ("X-One", "x")])
    assert h.get_all("set-cookie") == ["a=1", "b=2, c=3"]
    assert h.get("SET-COOKIE") == "a=1"
    assert h["Set-Cookie"] == "a=1"
    assert len(h) == 2


def test_headers_case_insensitive_lookup_and_lowercase_names() -> None:
    h = Headers([("Content-Type", "Text/HTML"), ("X-Foo", "Bar")])
    assert "content-type" in h and "CONTENT-TYPE" in h and "Content-Type" in h
    assert h.get("x-FOO") == "Bar"
    assert h.get_all("X-FOO") == ["Bar"]
    assert list(h) == ["content-type", "x-foo"]
    assert list(h.items()) == [("content-type", "Text/HTML"), ("x-foo", "Bar")]
    assert "missing" not in h
    assert 42 not in h
    with pytest.raises(KeyError):
        h["Missing"]


def test_headers_constructors() -> None:
    from_dict = Headers({"A": "1", "b": "2"})
    assert from_dict.to_list() == [("a", "1"), ("b", "2")]
    copied = Headers(from_dict)
    assert copied == from_dict and copied is not from_dict
    from_md = Headers(MultiDict([("X-A", "1"), ("x-a", "2")]))
    assert from_md.get_all("X-A") == ["1", "2"]
    assert Headers(None).to_list() == []
    assert Headers().to_list() == []
    assert Headers({"content-length": 5}).get("content-length") == "5"


def test_headers_bytes_are_latin1() -> None:
    h = Headers([(b"X-Name", b"caf\xe9")])
    assert h.get("x-name") == "café"
    assert isinstance(next(iter(h)), str)


def test_headers_reject_injection() -> None:
    with pytest.raises(ValueError):
        Headers([("x", "a\r\nEvil: 1")])
    with pytest.raises(ValueError):
        Headers([("x\n", "a")])
    with pytest.raises(ValueError):
        Headers([("", "a")])


# -- Request --------------------------------------------------------------------------


def test_request_url_path_and_query() -> None:
    r = Request("http://127.0.0.1:8787/a%20b/c%2Fd?x=1&x=2&y=%C3%A9+z&blank=&flag")
    assert r.url == "http://127.0.0.1:8787/a%20b/c%2Fd?x=1&x=2&y=%C3%A9+z&blank=&flag"
    assert r.url_path == "/a b/c/d"
    assert r.query.get_all("x") == ["1", "2"]
    assert r.query.get("x") == "1"
    assert r.query.get("y") == "é z"
    assert r.query.get("blank") == ""
    assert r.query.get("flag") == ""
    assert list(r.query) == ["x", "y", "blank", "flag"]
    assert "missing" not in r.query


def test_request_relative_url_made_absolute() -> None:
    r = Request("/path?x=1")
    assert r.url == "http://localhost/path?x=1"
    assert r.url_path == "/path"
    assert r.query.get("x") == "1"
    assert Request("path").url == "http://localhost/path"
    assert Request("http://h").url_path == "/"


def test_request_defaults_and_method() -> None:
    r = Request("http://h/")
    assert r.method == "GET"
    assert r.body == b""
    assert isinstance(r.headers, Headers) and len(r.headers) == 0
    assert len(r.query) == 0
    assert Request("/", method="post").method == "POST"
    with pytest.raises(ValueError):
        Request("/", method="GE T")
    with pytest.raises(ValueError):
        Request("/", method="")


def test_request_headers_are_multi_and_case_insensitive() -> None:
    r = Request("/", headers=[("Accept", "a"), ("accept", "b")])
    assert r.headers.get_all("ACCEPT") == ["a", "b"]
    r2 = Request("/", headers={"X-Token": "t"})
    assert r2.headers["x-token"] == "t"


def test_request_body_types() -> None:
    assert Request("/", body="héllo").body == "héllo".encode()
    assert Request("/", body=b"\x00\x01").body == b"\x00\x01"
    assert Request("/", body=bytearray(b"ab")).body == b"ab"
    assert Request("/", body=memoryview(b"cd")).body == b"cd"
    with pytest.raises(TypeError):
        Request("/", body=123)  # type: ignore[arg-type]


async def test_request_text_and_json() -> None:
    r = Request("/", method="POST", body=json.dumps({"a": [1, "é"]}))
    assert await r.text() == '{"a": [1, "\\u00e9"]}'
    assert await r.json() == {"a": [1, "é"]}
    assert await Request("/", body="héllo").text() == "héllo"
    assert await Request("/").text() == ""
    with pytest.raises(json.JSONDecodeError):
        await Request("/", body="not json").json()


def test_request_repr() -> None:
    assert "GET" in repr(Request("/x")) and "http://localhost/x" in repr(Request("/x"))


# -- Response -------------------------------------------------------------------------


def test_response_defaults() -> None:
    r = Response()
    assert r.status == 200
    assert r.body == b""
    assert isinstance(r.headers, Headers) and len(r.headers) == 0
    assert r.web_socket is None


def test_response_str_body_sets_text_content_type() -> None:
    r = Response("héllo")
    assert r.body == "héllo".encode()
    assert r.headers.get("Content-Type") == "text/plain; charset=utf-8"


def test_response_str_body_keeps_given_content_type() -> None:
    r = Response("<p>hi</p>", headers={"Content-Type": "text/html"})
    assert r.headers.get_all("content-type") == ["text/html"]


def test_response_bytes_body_has_no_default_content_type() -> None:
    for body in (b"ab", bytearray(b"ab"), memoryview(b"ab")):
        r = Response(body)
        assert r.body == b"ab" and type(r.body) is bytes
        assert "content-type" not in r.headers
    with pytest.raises(TypeError):
        Response(1.5)  # type: ignore[arg-type]


def test_response_multi_value_headers() -> None:
    r = Response("x", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert r.headers.get_all("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("status", [101, 100, 0, 600, -1, 1000])
def test_response_status_validation_invalid(status: int) -> None:
    with pytest.raises(ValueError):
        Response(status=status)


@pytest.mark.parametrize("status", [102, 200, 204, 301, 404, 500, 599])
def test_response_status_validation_valid(status: int) -> None:
    assert Response(status=status).status == status


def test_response_status_type() -> None:
    with pytest.raises(TypeError):
        Response(status="200")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Response(status=True)


def test_response_101_with_web_socket() -> None:
    sentinel = object()
    r = Response(status=101, web_socket=sentinel)
    assert r.status == 101
    assert r.web_socket is sentinel


async def test_response_json_constructor_vs_instance_method() -> None:
    r = Response.json({"a": 1, "b": ["é", None]})
    assert isinstance(r, Response)
    assert r.status == 200
    assert r.headers.get("Content-Type") == "application/json"
    assert json.loads(r.body) == {"a": 1, "b": ["é", None]}
    assert await r.json() == {"a": 1, "b": ["é", None]}
    assert await r.text() == r.body.decode()


async def test_response_json_status_and_headers() -> None:
    r = Response.json([1, 2], status=201, headers={"X-A": "1"})
    assert r.status == 201
    assert r.headers.get("x-a") == "1"
    assert r.headers.get("content-type") == "application/json"
    assert await r.json() == [1, 2]
    with pytest.raises(ValueError):
        Response.json({}, status=700)


async def test_instance_json_on_plain_response() -> None:
    r = Response('{"x": [1, 2]}')
    assert await r.json() == {"x": [1, 2]}
    assert await Response(b"caf\xc3\xa9").text() == "café"


def test_response_json_on_subclass_builds_subclass() -> None:
    class MyResponse(Response):
        pass

    assert type(MyResponse.json({})) is MyResponse


def test_response_repr() -> None:
    assert "404" in repr(Response(status=404))
