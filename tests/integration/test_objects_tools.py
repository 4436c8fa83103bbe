"""Object tools (SPEC §9, §11): list, delete, export and import, via the API and the CLI."""

import json
import subprocess
import sys

import apsw
import httpx
import pytest
import trio

from stateroom import _codec
from tests.conftest import APPS

APP = str(APPS / "storage" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=APP, workers=2)


def store(rt, name):
    return rt.namespace("STORE").get_by_name(name)


async def fill(s) -> None:
    await s.call("put", {"a": 1, "é": (1, "x"), "bytes": b"\x00\x01"})
    await s.sql(
        "CREATE TABLE t(x INTEGER PRIMARY KEY, y TEXT); INSERT INTO t(y) VALUES ('one'), ('two')"
    )


async def snapshot(s) -> dict:
    return {"kv": await s.call("list"), "t": (await s.sql("SELECT * FROM t ORDER BY x"))["rows"]}


async def cli(rt, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stateroom", *args, "--url", rt.url, "--token", rt.token]
    with trio.fail_after(60):
        return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)


async def test_export_then_import_round_trips_an_objects_whole_state(stateroom_runtime):
    rt = stateroom_runtime
    source, target = store(rt, "source"), store(rt, "target")
    await fill(source)
    await target.call("put", "old", "gone after import")
    data = await rt.client.export_object("STORE", str(source.id))
    # The export is a plain SQLite file any SQLite tool can read.
    plain = apsw.Connection(":memory:")
    plain.deserialize("main", data)
    assert plain.execute("SELECT y FROM t ORDER BY x").fetchall() == [("one",), ("two",)]
    assert plain.execute("SELECT count(*) FROM _stateroom_kv").get == 3
    plain.close()

    await rt.client.import_object("STORE", str(target.id), data)
    assert await snapshot(target) == await snapshot(source)
    # The source kept serving, and the import does not link the two objects.
    await source.call("put", "only-source", 1)
    assert "only-source" not in await target.call("list")


async def test_export_is_consistent_while_the_object_serves(stateroom_runtime):
    rt = stateroom_runtime
    s = store(rt, "busy")
    exported: list[bytes] = []

    async def writer() -> None:
        for i in range(150):
            await s.put_two(i, i)  # a and b change together, in one turn

    async def exporter() -> None:
        for _ in range(10):
            exported.append(await rt.client.export_object("STORE", str(s.id)))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(exporter)
    seen = set()
    for data in exported:
        conn = apsw.Connection(":memory:")
        conn.deserialize("main", data)
        rows = {
            k: _codec.decode(v) for k, v in conn.execute("SELECT key, value FROM _stateroom_kv")
        }
        conn.close()
        assert rows.get(b"a") == rows.get(b"b"), f"an export split one turn's writes: {rows}"
        seen.add(rows.get(b"a"))
    assert await s.call("get", ["a", "b"]) == {"a": 149, "b": 149}


async def test_importing_garbage_is_refused_and_changes_nothing(stateroom_runtime):
    rt = stateroom_runtime
    s = store(rt, "keep")
    await fill(s)
    before = await snapshot(s)
    for bad in [b"", b"not sqlite at all", b"SQLite format 3\x00" + b"\x00" * 200]:
        with pytest.raises(ValueError):
            await rt.client.import_object("STORE", str(s.id), bad)
    assert await snapshot(s) == before


async def test_list_and_delete_objects_through_the_admin_api(stateroom_runtime):
    rt = stateroom_runtime
    a, b = store(rt, "alpha"), store(rt, "beta")
    await fill(a)
    await b.call("put", "x", 1)
    unnamed = rt.namespace("STORE").get(rt.namespace("STORE").new_unique_id())
    await unnamed.call("put", "y", 2)
    listed = {o["id"]: o for o in await rt.client.objects("STORE")}
    assert listed[str(a.id)]["name"] == "alpha"
    assert listed[str(b.id)]["name"] == "beta"
    assert listed[str(unnamed.id)]["name"] is None
    assert all(o["bytes"] > 0 for o in listed.values())
    info = await rt.client.object_info("STORE", str(a.id))
    assert info["name"] == "alpha" and info["bytes"] > 0

    await rt.client.delete_object("STORE", str(a.id))
    assert str(a.id) not in {o["id"] for o in await rt.client.objects("STORE")}
    assert await a.call("list") == {}
    assert await b.call("get", "x") == 1

    async with httpx.AsyncClient(
        base_url=rt.url, headers={"authorization": f"Bearer {rt.token}"}
    ) as http:
        assert (await http.get("/_stateroom/v1/objects/NOPE")).status_code == 404
        assert (await http.get("/_stateroom/v1/objects/STORE/xyz")).status_code == 400
        assert (await http.get(f"/_stateroom/v1/objects/STORE/{'0' * 64}")).status_code == 400


@pytest.mark.stateroom(config=APP, workers=2, evict_after=2)
async def test_objects_list_shows_the_objects_in_memory_as_active(stateroom_runtime):
    rt = stateroom_runtime
    asleep = store(rt, "asleep")
    await asleep.call("put", "x", 1)

    async def listed() -> dict[str, bool]:
        return {o["id"]: o["active"] for o in await rt.client.objects("STORE")}

    assert (await listed())[str(asleep.id)] is True, "just called, so in memory"
    with trio.fail_after(20):
        while (await listed())[str(asleep.id)]:
            await trio.sleep(0.1)  # evicted after 2 s idle
    # Objects in memory on either worker are active; the evicted one is not.
    awake = [store(rt, f"awake-{i}") for i in range(6)]
    for s in awake:
        await s.call("put", "x", 1)
    active = await listed()
    assert {str(s.id): True for s in awake}.items() <= active.items(), active
    assert active[str(asleep.id)] is False
    out = await cli(rt, "objects", "list", "STORE", "--json")
    assert out.returncode == 0, out.stderr
    doc = {o["id"]: o["active"] for o in json.loads(out.stdout)["objects"]}
    assert doc[str(asleep.id)] is False


async def test_cli_lists_exports_imports_and_deletes_objects(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    src = store(rt, "cli-src")
    await fill(src)
    before = await snapshot(src)
    out = await cli(rt, "objects", "list", "STORE", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {"id": str(src.id), "name": "cli-src"}.items() <= next(
        o for o in doc["objects"] if o["id"] == str(src.id)
    ).items()
    table = await cli(rt, "objects", "list", "STORE")
    assert str(src.id) in table.stdout.decode() and "cli-src" in table.stdout.decode()

    file = tmp_path / "cli-src.sqlite"
    out = await cli(rt, "objects", "export", "STORE", "--name", "cli-src", str(file))
    assert out.returncode == 0, out.stderr
    assert file.read_bytes()[:16] == b"SQLite format 3\x00"
    out = await cli(rt, "objects", "import", "STORE", "cli-dst", str(file))
    assert out.returncode == 0, out.stderr
    dst = store(rt, "cli-dst")
    assert await snapshot(dst) == await snapshot(src)

    out = await cli(rt, "objects", "export", "STORE", str(src.id), str(tmp_path / "by-id.sqlite"))
    assert out.returncode == 0, out.stderr
    out = await cli(rt, "objects", "delete", "STORE", "--name", "cli-dst")
    assert out.returncode == 0, out.stderr
    assert await dst.call("list") == {}

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"nope")
    out = await cli(rt, "objects", "import", "STORE", "cli-src", str(garbage))
    assert out.returncode != 0
    assert out.stderr.decode().count("\n") == 1, out.stderr
    assert await snapshot(src) == before
    out = await cli(rt, "objects", "export", "STORE")
    assert out.returncode != 0
