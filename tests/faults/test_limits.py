"""Limits (SPEC §8): CPU per event, memory per worker, queued events per object, and
the resets `ctx.abort()` and a failed `block_concurrency_while` cause.

CPU runs with `--cpu-limit 1`: a runaway loop is stopped inside the worker and its
object reset (same worker process); one that cannot be interrupted costs its worker
a restart while the other worker serves on.
"""

import httpx
import pytest
import trio

from stateroom import DurableObjectError, ObjectResetError, OverloadedError, WorkerCrashedError

from .helpers import APP, box, eventually, names_on_each_worker, owner_of, wait_replaced, workers

pytestmark = pytest.mark.stateroom(config=APP, workers=2, cpu_limit=1)


@pytest.fixture(autouse=True)
def quick_silence(monkeypatch):
    # A worker silent for cpu_limit + 2 s is killed (default: + 10 s).
    monkeypatch.setenv("STATEROOM_SILENCE_GRACE", "2")


async def fails_with_reset(call):
    with pytest.raises(DurableObjectError) as info:
        await call()
    return info.value


@pytest.mark.parametrize("method", ["spin", "spin_awaiting", "sleep_blocking"])
async def test_runaway_event_is_stopped_and_its_object_reset_in_the_same_worker(
    stateroom_runtime, method
):
    rt = stateroom_runtime
    stub = box(rt, f"runaway-{method}")
    await stub.put("k", "kept")
    boot, pid = await stub.boot_id(), await stub.pid()
    args = (30,) if method == "sleep_blocking" else ()
    with trio.fail_after(15):
        err = await fails_with_reset(lambda: getattr(stub, method)(*args))
    assert isinstance(err, ObjectResetError), repr(err)
    assert "CPU limit" in str(err)
    # Reset, not restarted: a new instance in the same process, committed data kept.
    assert await stub.pid() == pid
    assert await stub.boot_id() != boot
    assert await stub.get("k") == "kept"


async def test_calls_in_flight_to_a_runaway_object_fail_with_a_runtime_error(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "bystander")
    errors = []

    async def sleeper():
        try:
            await stub.sleep(20)
        except DurableObjectError as exc:
            errors.append(exc)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await eventually("the sleeping call to be in flight", stub.sleepers)
            await fails_with_reset(stub.spin)
    assert len(errors) == 1 and errors[0].retryable is True


@pytest.mark.parametrize("method", ["spin_stubbornly", "hold_gil"])
async def test_uninterruptible_event_costs_its_worker_a_restart_and_others_serve_on(
    stateroom_runtime, method
):
    rt = stateroom_runtime
    procs = await workers(rt)
    names = names_on_each_worker(procs, rt.namespace("BOX"))
    victim_stub, other_stub = box(rt, names[0][0]), box(rt, names[1][0])
    await victim_stub.put("k", "kept")
    victim = await owner_of(rt, victim_stub)
    served_meanwhile = []

    async def other_worker_serves():
        while True:
            served_meanwhile.append(await other_stub.put("k", len(served_meanwhile)))
            await trio.sleep(0.05)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_worker_serves)
            err = await fails_with_reset(getattr(victim_stub, method))
            nursery.cancel_scope.cancel()
    assert err.retryable is True, repr(err)
    await wait_replaced(rt, victim["index"], victim["pid"])
    assert await victim_stub.get("k") == "kept"
    assert len(served_meanwhile) >= 5


async def test_worker_that_goes_silent_is_killed_by_the_supervisor(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "silent")
    await stub.put("k", "kept")
    victim = await owner_of(rt, stub)
    with trio.fail_after(30):
        err = await fails_with_reset(lambda: stub.sleep_holding_the_gil(60))
    assert isinstance(err, WorkerCrashedError) and err.retryable is True
    await wait_replaced(rt, victim["index"], victim["pid"])
    assert await stub.get("k") == "kept"


@pytest.mark.stateroom(config=APP, workers=2, worker_memory_limit=300 * 1024 * 1024)
async def test_worker_over_its_memory_limit_is_restarted(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "hog")
    await stub.put("k", "kept")
    victim = await owner_of(rt, stub)
    try:
        await stub.hog(400 * 1024 * 1024)
    except DurableObjectError:
        pass  # the kill may come before the reply
    await wait_replaced(rt, victim["index"], victim["pid"])
    assert await stub.get("k") == "kept"
    entry = next(p for p in await workers(rt) if p["index"] == victim["index"])
    assert entry["rss_bytes"] < 300 * 1024 * 1024


@pytest.mark.stateroom(config=APP, workers=2, max_queued_events=5)
async def test_more_queued_events_than_the_limit_are_refused_as_overloaded(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "busy")
    outcomes = []

    async def one():
        try:
            outcomes.append(await stub.get("k"))
        except OverloadedError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stub.hold, 2)  # closes the input gate: events queue behind it
        await trio.sleep(0.3)
        for _ in range(12):
            nursery.start_soon(one)
    refused = [o for o in outcomes if isinstance(o, OverloadedError)]
    assert len(refused) == 12 - 5, outcomes
    assert all(e.overloaded and e.retryable for e in refused)
    assert outcomes.count(None) == 5


@pytest.mark.stateroom(config=APP, workers=2, max_queued_events=3)
async def test_overload_over_http_is_503_with_retry_after(stateroom_runtime):
    rt = stateroom_runtime
    procs = await workers(rt)
    name = names_on_each_worker(procs, rt.namespace("BOX"))[0][0]
    stub = box(rt, name)
    statuses = []
    headers = {"authorization": f"Bearer {rt.token}"}
    async with httpx.AsyncClient(base_url=rt.url, timeout=30, headers=headers) as http:

        async def one(path):
            r = await http.get(path)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert "Overloaded" in r.text

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stub.hold, 2)
            await trio.sleep(0.3)
            for _ in range(5):
                nursery.start_soon(one, f"/box/{name}/get/k")  # through Default
                nursery.start_soon(one, f"/_stateroom/v1/fetch/BOX/{stub.id}/get/k")  # SDK route
    assert statuses.count(503) == 10 - 3, statuses
    assert statuses.count(200) == 3


async def test_abort_resets_the_object_and_fails_calls_in_flight(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "aborting")
    await stub.put("k", "kept")
    boot = await stub.boot_id()
    errors = []

    async def sleeper():
        try:
            await stub.sleep(20)
        except DurableObjectError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            await eventually("the sleeping call to be in flight", stub.sleepers)
            err = await fails_with_reset(stub.abort)
    assert "aborted" in str(err)
    assert len(errors) == 1 and errors[0].retryable is True
    assert await stub.boot_id() != boot
    assert await stub.get("k") == "kept"


async def test_failed_block_concurrency_while_resets_the_object(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "blocking")
    boot = await stub.boot_id()
    # The event that called it is in flight on the reset object: a runtime error
    # naming the cause (inside the object, the ValueError itself was raised).
    with pytest.raises(ObjectResetError, match="boom inside block_concurrency_while"):
        await stub.fail_blocking()
    assert await stub.boot_id() != boot


async def test_kill_worker_helper_restarts_the_owner_of_an_object(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "helper")
    pid = await stub.pid()
    assert await rt.kill_worker(stub) == pid
    assert await eventually("a new owner", stub.pid) != pid
