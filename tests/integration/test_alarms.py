"""Alarms end to end (SPEC §4, §5, §13, §14): real supervisor and workers.

The test app (`tests/apps/alarms`) records every alarm run in the object's storage
(`at` = wall time the handler started, `scheduled`, `retry`, ...), so "never early"
is checked against the recorded start time. Retries run with a short backoff base
(`STATEROOM_ALARM_RETRY_BASE=0.05` s) except in the test of the real 2 s schedule.
"""

import datetime as dt
import time
import types

import httpx
import pytest
import trio

from stateroom import DurableObjectError
from stateroom.testing import open_runtime
from tests.conftest import APPS

APP = str(APPS / "alarms" / "stateroom.toml")
FAST_BASE = 0.05
pytestmark = pytest.mark.stateroom(config=APP, workers=2)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Runtimes started by these tests retry failed alarms after 0.05 s * 2^(k-1)."""
    monkeypatch.setenv("STATEROOM_ALARM_RETRY_BASE", str(FAST_BASE))


def now_ms() -> int:
    return int(time.time() * 1000)


async def wait_for(what: str, probe, timeout: float = 15.0):
    """Poll `await probe()` until it returns a truthy value; fail naming `what`.

    A probe caught by a worker crash (a retryable runtime error) counts as "not yet".
    """
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    value = await probe()
                except DurableObjectError as exc:
                    if not exc.retryable:
                        raise
                    value = None
                if value:
                    return value
                await trio.sleep(0.05)
    except trio.TooSlowError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def index_entry(rt, stub) -> dict:
    """The supervisor's alarm index entry for `stub`'s object."""
    async with httpx.AsyncClient(
        base_url=rt.url, headers={"authorization": f"Bearer {rt.token}"}
    ) as http:
        r = await http.get(f"/_stateroom/v1/objects/ALARMS/{stub.id}/alarm")
        r.raise_for_status()
        return r.json()


async def index_stats(rt) -> dict:
    async with httpx.AsyncClient(
        base_url=rt.url, headers={"authorization": f"Bearer {rt.token}"}
    ) as http:
        r = await http.get("/_stateroom/v1/alarms")
        r.raise_for_status()
        return r.json()


async def wait_settled(rt, stub) -> None:
    """Wait until neither the object nor the index holds an alarm (nothing can fire)."""

    async def settled():
        entry = await index_entry(rt, stub)
        return entry["time"] is None and not entry["running"] and await stub.get_alarm() is None

    await wait_for(f"the alarm of {stub.name} to be gone", settled)


async def wait_firings(stub, n: int, timeout: float = 15.0) -> list:
    async def enough():
        firings = await stub.firings()
        return firings if len(firings) >= n else None

    return await wait_for(f"{n} alarm run(s) of {stub.name}", enough, timeout)


# ---------------------------------------------------------------- basics


async def test_alarm_fires_once_and_never_before_its_time(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("once")
    when = now_ms() + 700
    assert await stub.set_alarm(when) == when
    [run] = await wait_firings(stub, 1)
    assert run["at"] >= when, f"fired {when - run['at']:.1f} ms early"
    assert run["scheduled"] == when
    assert (run["retry"], run["is_retry"]) == (0, False)
    assert run["name"] == "once", "ctx.id.name is known when the alarm wakes the object"
    assert run["alarm_inside"] is None, "get_alarm() is None inside the running handler"
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == 1


async def test_get_alarm_returns_the_time_that_was_set(stateroom_runtime):
    stub = stateroom_runtime.namespace("ALARMS").get_by_name("values")
    assert await stub.get_alarm() is None
    far = now_ms() + 3_600_000
    assert await stub.set_alarm(far) == far
    assert await stub.get_alarm() == far
    aware = dt.datetime(2100, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    expected = int(aware.timestamp() * 1000)
    assert await stub.set_alarm(aware) == expected, "setting replaces; datetimes become epoch ms"
    sub_ms = dt.datetime(2100, 1, 1, 0, 0, 0, 1500, tzinfo=dt.UTC)
    assert await stub.set_alarm(sub_ms) == int(sub_ms.timestamp() * 1000) + 1, "rounded up"
    before = now_ms()
    past = await stub.set_alarm(1000)
    assert before <= past <= now_ms() + 1, "a past time means now"
    assert await stub.delete_alarm() is None
    assert await stub.get_alarm() is None


async def test_set_alarm_refuses_bad_times_and_changes_nothing(stateroom_runtime):
    stub = stateroom_runtime.namespace("ALARMS").get_by_name("bad")
    far = now_ms() + 3_600_000
    await stub.set_alarm(far)
    for bad, error in [(0, ValueError), (-5, ValueError), ("soon", TypeError), (None, TypeError)]:
        with pytest.raises(error):
            await stub.set_alarm(bad)
        assert await stub.get_alarm() == far, f"set_alarm({bad!r}) changed the alarm"


async def test_deleted_alarm_never_fires(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    doomed, control = ns.get_by_name("doomed"), ns.get_by_name("control")
    when = now_ms() + 600
    await doomed.set_alarm(when)
    await control.set_alarm(when + 200)
    assert await doomed.delete_alarm() is None
    await wait_firings(control, 1)
    assert await doomed.firings() == [], "a deleted alarm fired"
    assert (await index_entry(rt, doomed))["time"] is None


async def wait_held(rt, stub, when: int) -> None:
    """Wait until the supervisor has sent `stub`'s RunAlarm (held by the worker
    until `when`, see LEAD_MS); fail if `when` comes first."""
    while not (await index_entry(rt, stub))["running"]:
        assert now_ms() < when - 20, f"{stub.name}: no RunAlarm held before its time"
        await trio.sleep(0.01)


async def test_alarm_deleted_while_its_run_is_held_never_fires(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    doomed, control = ns.get_by_name("held-doomed"), ns.get_by_name("held-control")
    when = now_ms() + 1500
    await doomed.set_alarm(when)
    await control.set_alarm(when + 300)
    await wait_held(rt, doomed, when)
    assert await doomed.delete_alarm() is None
    await wait_firings(control, 1)
    assert await doomed.firings() == [], "an alarm deleted during its hold fired"
    await wait_settled(rt, doomed)


async def test_alarm_moved_earlier_while_its_run_is_held_fires_at_the_new_time(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("held-moved")
    when = now_ms() + 1500
    await stub.set_alarm(when)
    await wait_held(rt, stub, when)
    sooner = await stub.set_alarm(now_ms() + 30)
    [run] = await wait_firings(stub, 1)
    assert run["scheduled"] == sooner, f"ran the alarm of {run['scheduled']}, not {sooner}"
    assert run["at"] >= sooner, f"fired {sooner - run['at']:.1f} ms early"
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == 1


async def test_delete_all_removes_the_alarm(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    doomed, control = ns.get_by_name("wiped"), ns.get_by_name("control")
    when = now_ms() + 600
    await doomed.set_alarm(when)
    await control.set_alarm(when + 200)
    assert await doomed.delete_all() is None
    await wait_firings(control, 1)
    assert await doomed.firings() == []
    assert (await index_entry(rt, doomed))["time"] is None


async def test_deleting_an_object_removes_its_alarm(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    doomed, control = ns.get_by_name("deleted-object"), ns.get_by_name("control")
    when = now_ms() + 800
    await doomed.set_alarm(when)
    await control.set_alarm(when + 200)
    await rt.client.delete_object("ALARMS", str(doomed.id))
    assert (await index_entry(rt, doomed))["time"] is None
    await wait_firings(control, 1)
    assert await doomed.firings() == []
    assert await doomed.get_alarm() is None


async def test_past_alarm_fires_promptly(stateroom_runtime):
    stub = stateroom_runtime.namespace("ALARMS").get_by_name("past")
    set_at = now_ms()
    await stub.set_alarm(set_at - 60_000)
    [run] = await wait_firings(stub, 1, timeout=5)
    assert run["scheduled"] >= set_at


async def test_handler_can_set_the_next_alarm(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("chain")
    await stub.configure(again_ms=150, again_times=2)
    await stub.set_alarm(now_ms())
    runs = await wait_firings(stub, 3)
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later["scheduled"] >= earlier["at"] + 150
        assert later["at"] >= later["scheduled"]
        assert later["retry"] == 0
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == 3


async def test_each_alarm_run_is_billed_as_a_request(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("billed")
    await stub.configure(fail_times=1)  # request 1
    await stub.set_alarm(now_ms())  # request 2; runs twice (a failure, then its retry)

    async def ran_twice():
        entry = await index_entry(rt, stub)  # the index, not the object: no request
        return entry["time"] is None and not entry["running"] and entry["retry"] == 0

    await wait_for("the alarm and its retry to run", ran_twice)

    async def billed():
        doc = await rt.client.billing(group_by="object")
        mine = [g for g in doc["groups"] if g["object"] == str(stub.id)]
        return mine and mine[0]["requests"] == 4

    await wait_for("4 requests billed (2 RPCs + 2 alarm runs)", billed)


async def test_alarm_handler_may_omit_the_alarm_info_parameter(stateroom_runtime):
    stub = stateroom_runtime.namespace("BARE").get_by_name("bare")
    await stub.set_alarm(now_ms())
    await wait_for("the bare alarm handler to run", stub.runs)


async def test_alarm_set_in_a_rolled_back_transaction_does_not_replace_the_running_one(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("rolled-back")
    await stub.configure(rolled_back_set=True)
    await stub.set_alarm(now_ms())
    [run] = await wait_firings(stub, 1)
    assert run["inside_after_rollback"] is None
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == 1


# ---------------------------------------------------------------- failures and retries


async def test_raising_handler_is_retried_with_retry_count_1_then_2(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("flaky")
    await stub.configure(fail_times=2)
    when = now_ms() + 100
    await stub.set_alarm(when)
    runs = await wait_firings(stub, 3)
    assert [r["retry"] for r in runs] == [0, 1, 2]
    assert [r["is_retry"] for r in runs] == [False, True, True]
    assert {r["scheduled"] for r in runs} == {when}, "a retry keeps the scheduled time"
    for k, (failed, retry) in enumerate(zip(runs, runs[1:], strict=False), start=1):
        assert retry["at"] - failed["at"] >= FAST_BASE * 1000 * 2 ** (k - 1), f"retry {k} early"
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == 3


async def test_alarm_is_dropped_after_six_failed_retries(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("hopeless")
    await stub.configure(fail_times=100)
    await stub.set_alarm(now_ms())
    await wait_firings(stub, 7, timeout=20)
    await wait_settled(rt, stub)
    runs = await stub.firings()
    assert [r["retry"] for r in runs] == [0, 1, 2, 3, 4, 5, 6]


async def test_new_alarm_set_during_retries_replaces_the_pending_retry(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("replaced")
    await stub.configure(fail_times=100)
    await stub.set_alarm(now_ms())
    await wait_firings(stub, 2)
    await stub.configure(fail_times=0)
    fresh = now_ms() + 300
    await stub.set_alarm(fresh)
    runs = await wait_firings(stub, 3)
    last = runs[-1]
    assert (last["scheduled"], last["retry"]) == (fresh, 0)
    await wait_settled(rt, stub)
    assert all(r["scheduled"] != fresh for r in (await stub.firings())[:-1])


async def test_retries_follow_the_real_two_second_schedule(tmp_path, monkeypatch):
    monkeypatch.delenv("STATEROOM_ALARM_RETRY_BASE")
    async with open_runtime(tmp_path / "data", workers=1, config=APP) as rt:
        stub = rt.namespace("ALARMS").get_by_name("slow-retry")
        await stub.configure(fail_times=1)
        await stub.set_alarm(now_ms())
        first, retry = await wait_firings(stub, 2, timeout=10)
        gap = retry["at"] - first["at"]
        assert gap >= 2000, f"retry 1 came {gap:.0f} ms after the failure (< 2 s)"
        assert gap <= 2500 + 1000, f"retry 1 came {gap:.0f} ms after the failure"
        assert (retry["retry"], retry["is_retry"]) == (1, True)


# ---------------------------------------------------------------- restarts


async def test_alarm_fires_after_a_sigterm_restart(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("sigterm")
    when = now_ms() + 1500
    await stub.set_alarm(when)
    await rt.restart()
    stub = rt.namespace("ALARMS").get_by_name("sigterm")
    [run] = await wait_firings(stub, 1)
    assert run["at"] >= when


async def test_alarm_fires_after_the_supervisor_is_killed(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("kill9")
    when = now_ms() + 1000
    await stub.set_alarm(when)  # acknowledged: it must survive kill -9 right now
    await rt.restart(kill=True)
    stub = rt.namespace("ALARMS").get_by_name("kill9")
    [run] = await wait_firings(stub, 1)
    assert run["at"] >= when


async def test_overdue_alarms_fire_promptly_after_a_restart(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("overdue")
    await stub.set_alarm(now_ms() + 3_600_000)
    await rt.stop(kill=True)
    # While the runtime is down the alarm becomes overdue: move it into the past on disk.
    import apsw

    # The killed supervisor's workers exit on their own; wait for their locks to go.
    db = apsw.Connection(str(rt.data / "runtime.sqlite"))
    db.set_busy_timeout(20_000)
    with db:
        db.execute("UPDATE alarms SET time = time - 3600000, scheduled = scheduled - 3600000")
    db.close()
    obj = next((rt.data / "objects").glob(f"*/{stub.id}.sqlite"))
    odb = apsw.Connection(str(obj))
    odb.set_busy_timeout(20_000)
    with odb:
        odb.execute("UPDATE _stateroom_meta SET value = value - 3600000 WHERE key = 'alarm'")
    odb.close()
    started = now_ms()
    await rt.restart()
    stub = rt.namespace("ALARMS").get_by_name("overdue")
    [run] = await wait_firings(stub, 1, timeout=10)
    assert run["at"] - started < 5000


# ---------------------------------------------------------------- testing kit, deploys, scale


async def test_run_alarm_runs_the_handler_now(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("kit")
    assert await rt.run_alarm(stub) is False, "no alarm: nothing runs"
    far = now_ms() + 3_600_000
    await stub.set_alarm(far)
    assert await rt.run_alarm(stub) is True
    [run] = await stub.firings()
    assert (run["scheduled"], run["retry"]) == (far, 0)
    assert await stub.get_alarm() is None
    await stub.configure(fail_times=1)
    await stub.set_alarm(far)
    with pytest.raises(RuntimeError, match="alarm failure 1"):
        await rt.run_alarm(stub)
    runs = await wait_firings(stub, 3)
    assert runs[-1]["retry"] == 1, "the failed run is retried like any alarm"


async def test_an_imported_state_brings_its_alarm_along(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    source, copy = ns.get_by_name("export-source"), ns.get_by_name("import-target")
    when = now_ms() + 1000
    await source.set_alarm(when)
    image = await rt.client.export_object("ALARMS", str(source.id))
    await source.delete_alarm()
    await rt.client.import_object("ALARMS", str(copy.id), image)
    assert (await index_entry(rt, copy))["time"] == when
    [run] = await wait_firings(copy, 1)
    assert run["scheduled"] == when and run["name"] == "import-target"
    assert await source.firings() == []


async def test_deleting_the_class_removes_its_alarms(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("class-gone")
    await stub.set_alarm(now_ms() + 3_600_000)
    assert (await index_stats(rt))["pending"] == 1
    await rt.deploy(
        module=types.ModuleType("empty_app"),
        bindings={},
        migrations=[
            {"tag": "v1", "new_sqlite_classes": ["Alarmed"]},
            {"tag": "v2", "new_sqlite_classes": ["Bare"]},
            {"tag": "v3", "deleted_classes": ["Alarmed", "Bare"]},
        ],
    )
    stats = await index_stats(rt)
    assert (stats["pending"], stats["durable"]) == (0, 0)


async def test_a_thousand_alarms_due_in_the_same_second_each_fire_exactly_once(
    stateroom_runtime,
):
    rt = stateroom_runtime
    ns = rt.namespace("ALARMS")
    stubs = [ns.get_by_name(f"crowd-{i}") for i in range(1000)]
    due = now_ms() + 4000
    limiter = trio.CapacityLimiter(32)

    async def each(fn):
        async def one(stub):
            async with limiter:
                results[stub.name] = await fn(stub)

        results: dict = {}
        async with trio.open_nursery() as nursery:
            for stub in stubs:
                nursery.start_soon(one, stub)
        return results

    await each(lambda s: s.set_alarm(due + int(s.name.split("-")[1]) % 1000))

    async def all_done():
        stats = await index_stats(rt)
        return stats["pending"] == 0 and stats["running"] == 0 and stats["fired"] >= 1000

    await wait_for("1,000 alarms to run", all_done, timeout=40)
    firings = await each(lambda s: s.firings())
    counts = {name: len(runs) for name, runs in firings.items()}
    assert sorted(set(counts.values())) == [1], {n: c for n, c in counts.items() if c != 1}
    early = [n for n, runs in firings.items() if runs[0]["at"] < runs[0]["scheduled"]]
    assert not early, f"fired early: {early[:5]}"
