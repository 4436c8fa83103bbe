"""Storage promises under crashes (SPEC §6, §14): real processes, real kill -9.

* a response received means the write survives `kill -9` of every process;
* a write whose event failed before its commit is never visible (injected crash at
  `before_commit`, or a crash between two writes of one turn);
* the output gate: no reply leaves before its writes are durable;
* a second process cannot write (or read) an object's database while its owner lives.
"""

import glob
import os
import signal

import apsw
import pytest
import trio

from stateroom import DurableObjectError
from tests.conftest import APPS

APP = str(APPS / "storage" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=APP, workers=2, fault_injection=True)


def store(rt, name):
    return rt.namespace("STORE").get_by_name(name)


async def eventually(what: str, probe, timeout: float = 30.0):
    """Poll `await probe()` until it returns without a runtime error; fail naming `what`."""
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    return await probe()
                except DurableObjectError:
                    await trio.sleep(0.05)
    except trio.TooSlowError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def kill_every_process(rt) -> None:
    """SIGKILL the supervisor and every worker at once, then start again on the same data."""
    pids = await rt.worker_pids()
    os.kill(rt.process.pid, signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    await rt.restart(kill=True)


async def acknowledged_writes_survive(rt) -> None:
    s = store(rt, "acked")
    for i in range(30):
        await s.call("put", f"k{i:02d}", i)
    await s.sql("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)")
    assert await s.put_two("A", "B") is True
    await kill_every_process(rt)
    s = store(rt, "acked")
    listed = await eventually("the object after restart", lambda: s.call("list"))
    assert listed == {**{f"k{i:02d}": i for i in range(30)}, "a": "A", "b": "B"}
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 2}]


async def test_a_response_received_means_the_write_survives_kill_9_of_every_process(
    stateroom_runtime,
):
    await acknowledged_writes_survive(stateroom_runtime)


@pytest.mark.stateroom(config=APP, workers=2, fault_injection=True, durability="process")
async def test_process_durability_also_survives_kill_9_of_every_process(stateroom_runtime):
    await acknowledged_writes_survive(stateroom_runtime)


async def test_a_crash_before_commit_loses_both_writes_and_sends_no_reply(stateroom_runtime):
    rt = stateroom_runtime
    s = store(rt, "before-commit")
    await s.put_two("old-a", "old-b")
    await rt.inject("before_commit", s)
    with pytest.raises(DurableObjectError) as info:
        await s.put_two("new-a", "new-b")
    assert info.value.retryable, "nothing was committed, so the call is retryable"
    got = await eventually("the restarted worker", lambda: s.call("get", ["a", "b"]))
    assert got == {"a": "old-a", "b": "old-b"}


async def test_a_crash_between_two_writes_of_one_turn_leaves_neither(stateroom_runtime):
    rt = stateroom_runtime
    s = store(rt, "mid-turn")
    with pytest.raises(DurableObjectError):
        await s.put_then_crash()
    got = await eventually("the restarted worker", lambda: s.call("get", ["a", "b"]))
    assert got == {}


async def test_a_crash_after_commit_keeps_the_write_though_the_reply_was_lost(stateroom_runtime):
    rt = stateroom_runtime
    s = store(rt, "after-commit")
    await rt.inject("after_commit", s)
    with pytest.raises(DurableObjectError) as info:
        await s.put_two("x", "y")
    assert not info.value.retryable, "the write was committed: retrying is not safe"
    got = await eventually("the restarted worker", lambda: s.call("get", ["a", "b"]))
    assert got == {"a": "x", "b": "y"}


async def test_a_second_process_cannot_touch_the_database_while_its_owner_lives(
    stateroom_runtime,
):
    rt = stateroom_runtime
    s = store(rt, "fenced")
    await s.call("put", "owner", "worker")
    (path,) = glob.glob(str(rt.data / "objects" / "*" / f"{s.id}.sqlite"))
    intruder = apsw.Connection(path)
    try:
        intruder.set_busy_timeout(0)
        with pytest.raises(apsw.BusyError):
            intruder.execute("CREATE TABLE stolen(x)")
        with pytest.raises(apsw.BusyError):
            intruder.execute("SELECT count(*) FROM sqlite_master").fetchall()
    finally:
        intruder.close()
    await s.call("put", "still", "mine")
    assert await s.call("list") == {"owner": "worker", "still": "mine"}
    # Once the owner dies the OS drops its lock, and the new owner takes it.
    await rt.kill_worker(s)
    assert await eventually("the new owner", lambda: s.call("get", "still")) == "mine"
