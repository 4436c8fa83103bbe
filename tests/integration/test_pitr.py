"""Point-in-time recovery end to end (SPEC §5): bookmarks, restore at the next start."""

import time

import pytest
import trio

from stateroom import DurableObjectError
from tests.conftest import APPS

APP = str(APPS / "storage" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=APP, workers=2)


async def state(s) -> dict:
    tables = await s.sql(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE '\\_stateroom%' ESCAPE '\\' ORDER BY name"
    )
    names = [r["name"] for r in tables["rows"]]
    rows = (await s.sql("SELECT x FROM t ORDER BY x"))["rows"] if "t" in names else None
    return {"kv": await s.call("list"), "tables": names, "t": rows}


async def restart_object(s) -> None:
    with pytest.raises(DurableObjectError, match="aborted"):
        await s.abort()


async def test_restore_brings_back_an_earlier_state_of_kv_and_sql(stateroom_runtime):
    s = stateroom_runtime.namespace("STORE").get_by_name("pitr")
    await s.call("put", "a", 1)
    await s.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    b1 = await s.bookmark()
    before = await state(s)
    await s.call("put", {"a": 2, "b": "new"})
    await s.sql("INSERT INTO t VALUES (2); CREATE TABLE later(y)")
    await s.call("delete", "a")
    b2 = await s.bookmark()
    after = await state(s)
    assert b1 < b2, "bookmarks sort in time order"

    undo = await s.restore(b1)
    assert await state(s) == after, "the restore waits for the object's next start"
    await restart_object(s)
    assert await state(s) == before
    assert before == {"kv": {"a": 1}, "tables": ["t"], "t": [{"x": 1}]}

    # The returned bookmark undoes the restore.
    assert undo >= b2
    await s.restore(undo)
    await restart_object(s)
    assert await state(s) == after


async def test_bookmark_for_time_finds_the_state_at_that_moment(stateroom_runtime):
    s = stateroom_runtime.namespace("STORE").get_by_name("pitr-time")
    marks = []
    for i in range(3):
        await s.call("put", "v", i)
        await trio.sleep(0.02)
        marks.append(int(time.time() * 1000))
        await trio.sleep(0.02)
    bookmarks = [await s.bookmark_for_time(m) for m in marks]
    assert bookmarks == sorted(bookmarks)
    await s.restore(bookmarks[1])
    await restart_object(s)
    assert await s.call("get", "v") == 1
    # A datetime works too, and "now" names the current state.
    import datetime as dt

    now = await s.bookmark_for_time(dt.datetime.now(dt.UTC))
    assert now == await s.bookmark()


async def test_bad_bookmarks_and_times_are_refused_and_change_nothing(stateroom_runtime):
    s = stateroom_runtime.namespace("STORE").get_by_name("pitr-bad")
    await s.call("put", "a", 1)
    for bad in ["", "nonsense", "000000000000-00000000-0000ffff", "zz" * 15]:
        with pytest.raises(ValueError):
            await s.restore(bad)
    with pytest.raises(ValueError, match="window"):
        await s.bookmark_for_time(1000)  # 1970: outside the 7-day window
    with pytest.raises(TypeError):
        await s.bookmark_for_time("yesterday")
    await restart_object(s)
    assert await s.call("get", "a") == 1


async def test_history_survives_eviction_and_a_runtime_restart(stateroom_runtime):
    rt = stateroom_runtime
    s = rt.namespace("STORE").get_by_name("pitr-restart")
    await s.call("put", "a", "first")
    b1 = await s.bookmark()
    await s.call("put", "a", "second")
    await rt.restart()
    s = rt.namespace("STORE").get_by_name("pitr-restart")
    assert await s.call("get", "a") == "second"
    await s.restore(b1)
    await restart_object(s)
    assert await s.call("get", "a") == "first"
