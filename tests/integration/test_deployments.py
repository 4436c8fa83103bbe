"""Redeploys (SPEC §3, §11): code replaced in every worker without losing requests,
in-flight events finish on the old code, deployment history and rollback, broken
deploys refused with the previous deployment still serving."""

from __future__ import annotations

import sys

import httpx
import pytest
import trio

import stateroom
from tests.conftest import APPS, run_cli
from tests.integration.appgen import write_app


async def wait_for_file(path, what: str, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not path.exists():
            await trio.sleep(0.01)


@pytest.mark.stateroom(workers=2)
async def test_redeploys_under_load_lose_no_request_and_new_code_answers_afterwards(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    configs = [write_app(tmp_path / f"v{i}", version=f"v{i}") for i in (1, 2, 3)]
    await rt.deploy(configs[0])
    names = [f"load-{i}" for i in range(6)]
    sent = {n: 0 for n in names}
    failures: list[str] = []
    seen: dict[str, set[str]] = {n: set() for n in names}
    done = trio.Event()

    async def http_loop(http: httpx.AsyncClient, name: str) -> None:
        while not done.is_set():
            r = await http.get(f"/{name}")
            sent[name] += 1
            if r.status_code != 200:
                failures.append(f"GET /{name}: {r.status_code} {r.text.strip()}")
                continue
            version, _, count = r.text.partition(":")
            seen[name].add(version)

    async def rpc_loop(name: str) -> None:
        stub = rt.namespace("COUNTER").get_by_name(name)
        while not done.is_set():
            try:
                await stub.increment()
                sent[name] += 1
            except Exception as exc:  # noqa: BLE001 - recorded as a lost request
                failures.append(f"rpc {name}: {type(exc).__name__}: {exc}")

    async with httpx.AsyncClient(base_url=rt.url, timeout=30) as http:
        async with trio.open_nursery() as nursery:
            for n in names:
                nursery.start_soon(http_loop, http, n)
                nursery.start_soon(rpc_loop, n)
            with trio.fail_after(60):
                while min(sent.values()) < 5:
                    await trio.sleep(0.01)
                await rt.deploy(configs[1])
                before = dict(sent)
                while any(sent[n] < before[n] + 5 for n in names):
                    await trio.sleep(0.01)
                await rt.deploy(configs[2])
                while not all("v3" in seen[n] for n in names):
                    await trio.sleep(0.01)
            done.set()
    assert failures == [], f"requests failed during redeploys: {failures[:5]}"
    for n in names:
        stub = rt.namespace("COUNTER").get_by_name(n)
        assert await stub.version() == "v3"
        assert await stub.get() == sent[n], f"{n}: acknowledged writes lost across redeploys"
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/load-0")).text.startswith("v3:")
    assert [d["version"] for d in await rt.client.deployments()] == [1, 2, 3]


@pytest.mark.stateroom(workers=1)
async def test_in_flight_event_finishes_on_old_code_and_the_next_event_meets_the_new_class(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "v1", version="v1"))
    stub = rt.namespace("COUNTER").get_by_name("busy")
    assert await stub.increment(2) == 2
    started, release = tmp_path / "started", tmp_path / "release"
    results: dict[str, object] = {}

    async def call(key: str, method: str, *args: object) -> None:
        results[key] = await getattr(stub, method)(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "hold", "hold", str(started), str(release))
        await wait_for_file(started, "hold() to start")
        await rt.deploy(write_app(tmp_path / "v2", version="v2"))
        # Arrives after activation while the old instance still has an event in
        # flight: it must wait and run on the new class, not on the stale instance.
        nursery.start_soon(call, "version", "version")
        nursery.start_soon(call, "get", "get")
        release.touch()
    assert results == {"hold": "v1", "version": "v2", "get": 2}


@pytest.mark.stateroom(workers=1, deploy_grace=1)
async def test_event_outliving_the_grace_period_is_reset_with_a_retryable_error(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "v1", version="v1"))
    stub = rt.namespace("COUNTER").get_by_name("stuck")
    await stub.increment(7)
    started = tmp_path / "started"
    errors: list[BaseException] = []

    async def hold() -> None:
        try:
            await stub.hold(str(started), str(tmp_path / "never"))
        except stateroom.DurableObjectError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await wait_for_file(started, "hold() to start")
        await rt.deploy(write_app(tmp_path / "v2", version="v2"))
        with trio.fail_after(20):
            assert await stub.version() == "v2"
    assert len(errors) == 1 and errors[0].retryable, errors
    assert await stub.get() == 7


@pytest.mark.stateroom(workers=2)
async def test_rollback_restores_earlier_code_under_a_new_deployment_number(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "v1", version="v1"))
    await rt.deploy(write_app(tmp_path / "v2", version="v2"))
    stub = rt.namespace("COUNTER").get_by_name("r")
    assert await stub.increment(3) == 3
    assert await stub.version() == "v2"

    result = await rt.client.rollback()
    assert (result["version"], result["rolled_back_to"]) == (3, 1)
    assert await stub.version() == "v1"
    assert await stub.get() == 3, "a rollback must keep the data"
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/r")).text == "v1:4"

    result = await rt.client.rollback(2)
    assert (result["version"], result["rolled_back_to"]) == (4, 2)
    assert await stub.version() == "v2"
    history = await rt.client.deployments()
    assert [(d["version"], d["current"]) for d in history] == [
        (1, False),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert history[2]["note"] == "rollback to 1" and history[3]["note"] == "rollback to 2"
    assert history[0]["sha256"] == history[2]["sha256"]
    with pytest.raises(Exception, match="no deployment 99"):
        await rt.client.rollback(99)
    assert len(await rt.client.deployments()) == 4


cli = run_cli


@pytest.mark.stateroom(workers=1)
async def test_cli_lists_deployments_and_rolls_back(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    for v in ("v1", "v2"):
        out = await trio.to_thread.run_sync(
            cli, rt, "deploy", str(write_app(tmp_path / v, version=v))
        )
        assert out.returncode == 0, out.stderr
    assert "deployed version 2" in out.stdout

    out = await trio.to_thread.run_sync(cli, rt, "rollback")
    assert out.returncode == 0, out.stderr
    assert "version 1" in out.stdout and "version 3" in out.stdout
    await rt.client.refresh()  # the CLI deployed: the test's client learns the bindings
    assert await rt.namespace("COUNTER").get_by_name("x").version() == "v1"

    out = await trio.to_thread.run_sync(cli, rt, "deployments", "list")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3*"], out.stdout
    assert "rollback to 1" in out.stdout

    out = await trio.to_thread.run_sync(cli, rt, "rollback", "42")
    assert out.returncode != 0
    assert "no deployment 42" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.stateroom(workers=1)
async def test_cli_deploy_of_a_module_that_fails_to_import_exits_non_zero(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "v1", version="v1"))
    out = await trio.to_thread.run_sync(cli, rt, "deploy", str(APPS / "broken" / "stateroom.toml"))
    assert out.returncode != 0
    assert "broken on purpose" in out.stderr
    assert out.stderr.startswith("error: ")
    syntax = tmp_path / "syntax"
    write_app(syntax, version="v9")
    (syntax / "app.py").write_text((syntax / "app.py").read_text() + "\ndef oops(:\n")
    out = await trio.to_thread.run_sync(cli, rt, "deploy", str(syntax / "stateroom.toml"))
    assert out.returncode != 0
    assert "SyntaxError" in out.stderr
    assert [d["version"] for d in await rt.client.deployments()] == [1]
    assert await rt.namespace("COUNTER").get_by_name("x").version() == "v1"


@pytest.mark.stateroom(workers=2)
async def test_module_the_server_cannot_unpickle_is_a_400_and_old_code_keeps_serving(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_app(tmp_path / "v1", version="v1"))
    site = tmp_path / "client-site"
    (site / "client_only_dep").mkdir(parents=True)
    (site / "client_only_dep" / "__init__.py").write_text("class Helper:\n    value = 5\n")
    app = write_app(
        tmp_path / "v2",
        version="v2",
        extra="import client_only_dep\nHELPER = client_only_dep.Helper\n",
    )
    # The class refers to the third-party module by reference (pickled by name).
    text = (
        (app.parent / "app.py")
        .read_text()
        .replace(
            "    async def version(self):\n        return VERSION",
            "    async def version(self):\n        return VERSION + str(HELPER.value)",
        )
    )
    (app.parent / "app.py").write_text(text)

    out = await trio.to_thread.run_sync(
        lambda: cli(rt, "deploy", str(app), env={"PYTHONPATH": str(site)})
    )
    assert out.returncode != 0
    assert "client_only_dep" in out.stderr and "deploy refused" in out.stderr, out.stderr

    # The same through the HTTP API: 400 with the exception text.
    sys.path.insert(0, str(site))
    try:
        from stateroom._bundle import payload_from_config_path

        payload = payload_from_config_path(app)
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("client_only_dep", None)
    import msgspec

    async with httpx.AsyncClient(base_url=rt.url) as http:
        r = await http.post(
            "/_stateroom/v1/deployments",
            content=msgspec.msgpack.encode(payload),
            headers={"authorization": f"Bearer {rt.token}"},
        )
    assert r.status_code == 400
    assert "No module named 'client_only_dep'" in r.text
    assert [d["version"] for d in await rt.client.deployments()] == [1]
    assert not (rt.data / "deployments" / "000002.bundle").exists()
    assert await rt.namespace("COUNTER").get_by_name("x").version() == "v1"


@pytest.mark.stateroom(workers=1)
async def test_rollback_across_a_rename_is_refused_naming_the_class_and_changes_nothing(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    v1 = [{"tag": "v1", "new_sqlite_classes": ["Counter"]}]
    await rt.deploy(write_app(tmp_path / "v1", version="v1", migrations=v1))
    await rt.namespace("COUNTER").get_by_name("k").increment(2)
    await rt.deploy(
        write_app(
            tmp_path / "v2",
            version="v2",
            classes=("Tally",),
            bindings={"COUNTER": "Tally"},
            migrations=v1
            + [{"tag": "v2", "renamed_classes": [{"from": "Counter", "to": "Tally"}]}],
        )
    )
    with pytest.raises(stateroom.DeployError, match="cannot roll back to version 1: .*'Counter'"):
        await rt.client.rollback()
    assert len(await rt.client.deployments()) == 2
    assert await rt.namespace("COUNTER").get_by_name("k").get() == 2
    assert await rt.namespace("COUNTER").get_by_name("k").version() == "v2"


@pytest.mark.stateroom(workers=2)
async def test_renaming_a_class_under_load_loses_no_request(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    v1 = [{"tag": "v1", "new_sqlite_classes": ["Counter"]}]
    await rt.deploy(write_app(tmp_path / "v1", version="v1", migrations=v1))
    renamed = write_app(
        tmp_path / "v2",
        version="v2",
        classes=("Tally",),
        bindings={"COUNTER": "Tally"},
        migrations=v1 + [{"tag": "v2", "renamed_classes": [{"from": "Counter", "to": "Tally"}]}],
    )
    names = [f"ren-{i}" for i in range(6)]
    acked = {n: 0 for n in names}
    failures: list[str] = []
    done = trio.Event()

    async def http_loop(http: httpx.AsyncClient, name: str) -> None:
        while not done.is_set():
            r = await http.get(f"/{name}")
            if r.status_code != 200:
                failures.append(f"GET /{name}: {r.status_code} {r.text.strip()}")
            else:
                acked[name] += 1

    async with httpx.AsyncClient(base_url=rt.url, timeout=30) as http:
        async with trio.open_nursery() as nursery:
            for n in names:
                nursery.start_soon(http_loop, http, n)
            with trio.fail_after(60):
                while min(acked.values()) < 5:
                    await trio.sleep(0.01)
                await rt.deploy(renamed)
                before = dict(acked)
                while any(acked[n] < before[n] + 5 for n in names):
                    await trio.sleep(0.01)
            done.set()
    assert failures == [], f"requests failed during the rename: {failures[:5]}"
    for n in names:
        stub = rt.namespace("COUNTER").get_by_name(n)
        assert await stub.class_name() == "Tally"
        assert await stub.get() == acked[n], f"{n}: acknowledged writes lost across the rename"
