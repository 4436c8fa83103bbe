"""The runtime core end to end: deploy, HTTP through Default, RPC, ids, errors, restarts."""

import datetime as dt
import math
import socket
import sys
import uuid
from decimal import Decimal

import httpx
import pytest
import trio

import stateroom
from stateroom import DurableObjectId, RemoteError
from tests.conftest import APPS

CORE = str(APPS / "core" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=CORE, workers=2)


async def test_http_reaches_objects_through_default(stateroom_runtime):
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        assert (await http.get("/alice")).text == "1"
        assert (await http.post("/alice")).text == "2"
        assert (await http.get("/bob")).text == "1"
        r = await http.post(
            "/echo/e1/some%20path?q=1&q=2",
            headers=[("x-multi", "a"), ("x-multi", "b, c")],
            content=b"payload",
        )
    assert r.status_code == 200
    assert r.json() == {
        "method": "POST",
        "path": "/echo/e1/some path",
        "query": ["1", "2"],
        "header": ["a", "b, c"],
        "body": "payload",
    }


async def test_rpc_round_trips_every_codec_type(stateroom_runtime):
    echo = stateroom_runtime.namespace("ECHO").get_by_name("codec")
    oid = stateroom_runtime.namespace("COUNTER").id_from_name("x")
    values = [
        None,
        True,
        False,
        0,
        -(2**200),
        2**70,
        1.5,
        -0.0,
        math.inf,
        "text é 日本",
        b"\x00\xff",
        [1, [2, (3, 4)]],
        (1, "a", (None,)),
        {"a": 1, (1, 2): "tuple key", frozenset({1}): {"nested": [set()]}},
        {1, 2, 3},
        frozenset({"x"}),
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.date(2020, 2, 29),
        dt.time(23, 59, 59, 1),
        dt.timedelta(days=-1, microseconds=5),
        Decimal("3.14159265358979323846"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        oid,
    ]
    args, kwargs = await echo.echo(*values, key=values)
    assert list(args) == values
    for sent, got in zip(values, args, strict=True):
        assert type(sent) is type(got), (sent, got)
    assert math.copysign(1, args[7]) == -1.0
    assert kwargs == {"key": values}
    nan_args, _ = await echo.echo(math.nan)
    assert math.isnan(nan_args[0])
    assert isinstance(args[-1], DurableObjectId) and args[-1] == oid


async def test_unsupported_argument_raises_type_error_before_sending(stateroom_runtime):
    echo = stateroom_runtime.namespace("ECHO").get_by_name("codec")

    class Thing:
        pass

    with pytest.raises(TypeError, match="Thing"):
        await echo.echo(Thing())


async def test_concurrent_increments_on_one_object_are_never_lost(stateroom_runtime):
    counter = stateroom_runtime.namespace("COUNTER").get_by_name("hot")
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(counter.increment)
    assert await counter.get() == 200


async def test_ids_are_deterministic_and_survive_restart(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("COUNTER")
    first = ns.id_from_name("alice")
    assert str(first) == str(ns.id_from_name("alice"))
    assert len(str(first)) == 64 and str(first) == str(first).lower()
    assert first.name == "alice"
    assert ns.id_from_name("bob") != first
    # Another namespace gives another id for the same name.
    assert str(rt.namespace("ECHO").id_from_name("alice")) != str(first)
    who = await rt.namespace("ECHO").get_by_name("w").whoami()
    assert who["name"] == "w" and who["greeting"] == "hello"
    # The server computes the same id as the client.
    assert await rt.namespace("ECHO").get_by_name("w").id_of("alice") == first
    await ns.get_by_name("alice").increment(3)
    await rt.restart()
    ns = rt.namespace("COUNTER")
    assert ns.id_from_name("alice") == first
    assert await ns.get_by_name("alice").get() == 3


async def test_id_from_string_accepts_only_its_own_namespace(stateroom_runtime):
    rt = stateroom_runtime
    counters, echoes = rt.namespace("COUNTER"), rt.namespace("ECHO")
    unique = counters.new_unique_id()
    assert unique.name is None
    assert unique != counters.new_unique_id()
    parsed = counters.id_from_string(str(unique))
    assert parsed == unique and parsed.name is None
    named = counters.id_from_name("n")
    assert counters.id_from_string(str(named)) == named
    for bad in ["", "xyz", "A" * 64, "0" * 64, str(unique)[:-1], str(unique) + "0", "f" * 64]:
        with pytest.raises(ValueError):
            counters.id_from_string(bad)
    with pytest.raises(ValueError):
        echoes.id_from_string(str(unique))
    # A unique id addresses a real object.
    stub = counters.get(unique)
    assert await stub.increment(2) == 2
    assert await counters.get(str(unique)).get() == 2


async def test_errors_keep_their_type_and_message(stateroom_runtime):
    echo = stateroom_runtime.namespace("ECHO").get_by_name("errors")
    with pytest.raises(KeyError) as info:
        await echo.raise_builtin("missing")
    assert info.value.remote is True
    with pytest.raises(ValueError, match="bad value") as info2:
        await echo.raise_value("bad value")
    assert info2.value.remote is True
    with pytest.raises(RemoteError) as info3:
        await echo.raise_custom("custom text")
    assert info3.value.type_name == "CustomProblem"
    assert "custom text" in str(info3.value) and info3.value.remote is True
    with pytest.raises(TypeError, match="object"):
        await echo.return_unencodable()
    for name in ("fetch", "alarm", "web_socket_message", "_private", "nonexistent"):
        with pytest.raises((TypeError, AttributeError)):
            await getattr(echo, name)()
    # fetch errors come back as a 500 response, not raised.
    response = await echo.fetch("/boom")
    assert response.status == 500
    assert "RuntimeError: fetch exploded" in await response.text()
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        r = await http.get("/boom")
        assert r.status_code == 500 and "default exploded" in r.text
        assert "Traceback" not in r.text


async def test_objects_call_each_other_and_themselves(stateroom_runtime):
    rt = stateroom_runtime
    echo = rt.namespace("ECHO").get_by_name("caller")
    # Spread over several names so calls cross workers.
    for i in range(6):
        assert await echo.call_other(f"target-{i}", 5) == 5
        assert await echo.fetch_other(f"target-{i}") == [200, "6"]
    assert await echo.call_self() == [("via-self",), {}]


async def test_broken_deploy_is_refused_and_old_code_keeps_serving(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.namespace("COUNTER").get_by_name("keep")
    await counter.increment()
    with pytest.raises(stateroom.DeployError, match="broken on purpose"):
        await rt.deploy(str(APPS / "broken" / "stateroom.toml"))
    assert await counter.increment() == 2
    deployments = await rt.client.deployments()
    assert [d["version"] for d in deployments] == [1]


async def test_deploy_of_class_the_server_cannot_unpickle_is_a_400(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    pkg = tmp_path / "site" / "only_on_client_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 41\n")
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(
        "import only_on_client_pkg\n"
        "from stateroom import DurableObject\n"
        "class Counter(DurableObject):\n"
        "    async def value(self):\n"
        "        return only_on_client_pkg.VALUE + 1\n"
    )
    (app / "stateroom.toml").write_text(
        'main = "app.py"\n[[durable_objects.bindings]]\nname = "COUNTER"\nclass_name = "Counter"\n'
        '[[migrations]]\ntag = "v1"\nnew_classes = ["Counter"]\n'
    )
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        with pytest.raises(stateroom.DeployError, match="only_on_client_pkg"):
            await rt.deploy(str(app / "stateroom.toml"))
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("only_on_client_pkg", None)
    assert await rt.namespace("COUNTER").get_by_name("still").increment() == 1


async def test_data_survives_sigterm_restart(stateroom_runtime):
    rt = stateroom_runtime
    names = [f"obj-{i}" for i in range(20)]
    for i, n in enumerate(names):
        await rt.namespace("COUNTER").get_by_name(n).increment(i + 1)
    code = await rt.stop()
    assert code == 0
    await rt.start(rt._nursery)
    for i, n in enumerate(names):
        assert await rt.namespace("COUNTER").get_by_name(n).get() == i + 1


async def test_admin_routes_need_the_token(stateroom_runtime):
    rt = stateroom_runtime
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/_stateroom/health")).status_code == 200
        for path in ("/_stateroom/v1/processes", "/_stateroom/v1/namespaces", "/_stateroom/nope"):
            assert (await http.get(path)).status_code == 401
            bad = {"authorization": "Bearer wrong"}
            assert (await http.get(path, headers=bad)).status_code == 401
        good = {"authorization": f"Bearer {rt.token}"}
        assert (await http.get("/_stateroom/nope", headers=good)).status_code == 404
        r = await http.get("/_stateroom/v1/namespaces", headers=good)
        assert r.status_code == 200
        bindings = {n["binding"]: n["class"] for n in r.json()["namespaces"]}
        assert bindings == {"ECHO": "Echo", "COUNTER": "Counter"}
        r = await http.get("/_stateroom/v1/namespaces/COUNTER/id?name=alice", headers=good)
        assert r.json() == {"id": str(rt.namespace("COUNTER").id_from_name("alice"))}
        r = await http.get("/_stateroom/v1/namespaces/NOPE/id?name=alice", headers=good)
        assert r.status_code == 404


async def test_objects_spread_over_all_workers(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("COUNTER")
    pids = {await ns.get_by_name(f"spread-{i}").pid() for i in range(24)}
    workers = set(await rt.worker_pids())
    assert pids == workers and len(workers) == 2
    procs = await rt.processes()
    assert [p["role"] for p in procs].count("supervisor") == 1
    shards = sorted(s for p in procs if p["role"] == "worker" for s in p["shards"])
    assert shards == list(range(256))
    for p in procs:
        assert {"pid", "role", "shards", "restarts", "uptime_s"} <= set(p)


async def test_app_response_headers_reach_the_client_as_set_and_bad_ones_never_do(
    stateroom_runtime,
):
    def exchange(sock: socket.socket, request: bytes) -> bytes:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        if not request.startswith(b"HEAD"):
            while len(rest) < length:
                rest += sock.recv(65536)
        return head + b"\r\n\r\n" + rest

    with socket.create_connection(("127.0.0.1", stateroom_runtime.port), timeout=10) as s:
        response = exchange(s, b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 200 "
        assert lines[1:] == [
            b"set-cookie: a=1",
            b"x-mixed-case: kept",
            b"set-cookie: b=2",
            b"content-type: text/plain; charset=utf-8",
            b"content-length: 5",
        ], f"response head as sent: {lines}"
        assert body == b"hello"
        # Same connection (keep-alive): HEAD gets the head without the body.
        response = exchange(s, b"HEAD /headers HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(
            b"content-length: 5\r\n\r\n"
        )
        # A header value smuggling a line break becomes a 500; nothing is injected.
        response = exchange(
            s, b"GET /headers?value=x%0D%0AX-Injected:%20yes HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 500 "), response
        assert b"x-injected" not in response.lower().split(b"\r\n\r\n")[0], response


async def test_requests_on_a_path_run_default_on_the_worker_owning_its_object(
    stateroom_runtime,
):
    # Once a path's Default has called its object in another worker, the path's next
    # requests run Default on that object's worker (the call stays local).
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        for i in range(8):
            path = f"/where/affinity-{i}"
            seen = [(await http.get(path)).json() for _ in range(6)]
            relayed = [s["default_pid"] != s["object_pid"] for s in seen]
            assert True in relayed[:2], f"{path}: two requests in a row ran locally: {seen}"
            first = relayed.index(True)
            assert not any(relayed[first + 1 :]), (
                f"{path}: Default ran away from the object's worker after a relayed call: {seen}"
            )


async def test_bad_input_gets_clear_errors_and_server_keeps_serving(stateroom_runtime):
    rt = stateroom_runtime
    host, port = "127.0.0.1", rt.port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    async with httpx.AsyncClient(base_url=rt.url, timeout=30) as http:
        big = b"x" * (32 * 1024 * 1024 + 1)
        r = await http.post("/alice", content=big)
        assert r.status_code == 413
        auth = {"authorization": f"Bearer {rt.token}"}
        r = await http.post("/_stateroom/v1/rpc/NOPE/name:a/get", headers=auth, content=b"")
        assert r.status_code == 404
        r = await http.post(f"/_stateroom/v1/rpc/COUNTER/id:{'0' * 64}/get", headers=auth)
        assert r.status_code == 400
        assert (await http.get("/alice")).status_code == 200
    with pytest.raises(stateroom.BindingNotFoundError):
        rt.namespace("NOPE")


async def test_sync_client_works_from_a_thread(stateroom_runtime):
    rt = stateroom_runtime

    def use_sync():
        with stateroom.connect_sync(rt.url, token=rt.token) as client:
            stub = client.namespace("COUNTER").get_by_name("sync")
            return stub.increment(4), stub.fetch("/").status

    assert await trio.to_thread.run_sync(use_sync) == (4, 200)


@pytest.mark.stateroom(workers=1)
async def test_app_paths_without_a_deployment_answer_404_with_a_hint(stateroom_runtime):
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        r = await http.get("/anything")
    assert r.status_code == 404 and "deploy" in r.text
