"""Alarms under crashes (SPEC §13, §14): an alarm whose run is cut short by a dying
worker or supervisor runs again; the injected `during_alarm` crash point works."""

import pytest

from stateroom import DurableObjectError
from tests.integration.test_alarms import (
    APP,
    FAST_BASE,
    index_entry,
    now_ms,
    wait_firings,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.stateroom(config=APP, workers=2, fault_injection=True)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("STATEROOM_ALARM_RETRY_BASE", str(FAST_BASE))


async def test_worker_crash_at_during_alarm_is_retried(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("injected")
    await rt.inject("during_alarm", stub)
    when = now_ms() + 1000  # far enough that set_alarm's reply is out before the crash
    await stub.set_alarm(when)
    [run] = await wait_firings(stub, 1)
    # The crashed attempt died before the handler recorded anything.
    assert (run["retry"], run["is_retry"], run["scheduled"]) == (1, True, when)
    assert run.get("done")
    await wait_settled(rt, stub)


async def test_worker_killed_while_the_handler_runs_is_retried(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("killed-worker")
    await stub.configure(sleep_first_s=30)
    await stub.set_alarm(now_ms())

    async def running():
        return (await index_entry(rt, stub))["running"]

    await wait_for("the first alarm run to start", running)
    await wait_for("the first run to record itself", stub.firings)
    await rt.kill_worker(stub)
    runs = await wait_firings(stub, 2)
    assert [r["retry"] for r in runs] == [0, 1]
    assert "done" not in runs[0] and runs[1].get("done")
    await wait_settled(rt, stub)


async def test_alarm_cut_short_by_a_supervisor_kill_runs_again(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("killed-supervisor")
    await stub.configure(sleep_first_s=30)
    await stub.set_alarm(now_ms())
    await wait_for("the first run to record itself", stub.firings)
    await rt.restart(kill=True)
    stub = rt.namespace("ALARMS").get_by_name("killed-supervisor")

    async def completed():
        runs = await stub.firings()
        return runs if any(r.get("done") for r in runs) else None

    runs = await wait_for("a complete alarm run after the restart", completed)
    assert len(runs) == 2 and "done" not in runs[0]
    await wait_settled(rt, stub)


async def test_alarm_whose_report_died_with_the_worker_fires_once_the_object_starts(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("unreported")
    await rt.inject("after_commit", stub)
    when = now_ms() + 300
    with pytest.raises(DurableObjectError):
        await stub.set_alarm(when)  # committed, then the worker died: not acknowledged
    assert await stub.get_alarm() == when, "the committed alarm is visible"
    [run] = await wait_firings(stub, 1)
    assert run["scheduled"] == when


async def test_alarm_is_dropped_after_crashing_its_worker_seven_times(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("crashes-every-time")
    await rt.inject("during_alarm", stub, times=7)
    await stub.set_alarm(now_ms() + 300)

    async def dropped():
        entry = await index_entry(rt, stub)
        return entry["time"] is None and not entry["running"]

    # The first run and its 6 retries all crash; then the stored alarm is dropped.
    await wait_for("the alarm to be dropped after 7 crashed runs", dropped, timeout=60)
    assert await stub.get_alarm() is None
    assert await stub.firings() == []


async def test_worker_killed_while_holding_an_alarm_run_costs_no_retry(stateroom_runtime):
    # The supervisor sends an alarm's run LEAD_MS (250 ms) ahead and the worker holds
    # it until its time. A worker that dies during the hold ran nothing: the alarm
    # fires at its time on the restarted worker as a first attempt, not a retry.
    rt = stateroom_runtime
    stub = rt.namespace("ALARMS").get_by_name("held-then-killed")
    for _attempt in range(3):
        when = now_ms() + 1500
        await stub.set_alarm(when)

        async def held(when=when):
            return (await index_entry(rt, stub))["running"] or now_ms() >= when - 40

        await wait_for("the alarm's run to be sent ahead", held)
        if now_ms() < when - 40:
            break
        # Too slow to catch the hold this time: let that run end, then try again.
        await wait_settled(rt, stub)
    else:
        pytest.fail("never saw an alarm run held before its time (machine too slow?)")
    killed = await stub.firings()
    await rt.kill_worker(stub)
    runs = await wait_firings(stub, len(killed) + 1)
    run = runs[-1]
    assert run["at"] >= when, f"fired {when - run['at']:.1f} ms early"
    assert (run["scheduled"], run["retry"], run["is_retry"]) == (when, 0, False)
    assert run.get("done")
    await wait_settled(rt, stub)
    assert len(await stub.firings()) == len(killed) + 1, "the held run fired more than once"
