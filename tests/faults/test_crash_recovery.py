"""Crash recovery (SPEC §8, §9, §14): real processes, real kill -9.

* a killed worker is restarted and its objects serve again;
* calls caught by the crash fail with `DurableObjectError` (`retryable` exactly when
  the call had no durable effect), and over HTTP with 503 + Retry-After, whether the
  object's worker or the worker running `Default` died;
* a supervisor killed with -9 and started again on the same data loses nothing
  acknowledged; its orphaned workers exit by themselves, and a new supervisor fences
  out one that could not;
* one supervisor per data folder.
"""

import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from stateroom import DurableObjectError, WorkerCrashedError

from .helpers import (
    APP,
    box,
    eventually,
    names_on_each_worker,
    owner_of,
    running,
    wait_replaced,
    workers,
)

pytestmark = pytest.mark.stateroom(config=APP, workers=2)


async def call_during_kill(rt, victim_pid, call):
    """Run `call()` and kill -9 `victim_pid` once the call is in flight; returns the error."""
    outcome = {}

    async def run():
        try:
            outcome["value"] = await call()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.sleep(0.3)  # let the call reach the object (it sleeps for seconds)
        os.kill(victim_pid, signal.SIGKILL)
    return outcome


async def test_killed_worker_serves_its_objects_again(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "again")
    await stub.put("k", "v")
    victim = await owner_of(rt, stub)
    os.kill(victim["pid"], signal.SIGKILL)

    async def served():
        return await stub.get("k") == "v"

    await eventually("the object to serve after its worker was killed", served, timeout=5)
    new_pid = await wait_replaced(rt, victim["index"], victim["pid"])
    assert await stub.pid() == new_pid
    assert [p for p in await workers(rt) if p["index"] == victim["index"]][0]["restarts"] == 1


async def test_rpc_caught_by_a_worker_kill_fails_retryable_when_nothing_was_written(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = box(rt, "rpc-read")
    victim = await owner_of(rt, stub)
    outcome = await call_during_kill(rt, victim["pid"], lambda: stub.sleep(30))
    err = outcome.get("error")
    assert isinstance(err, WorkerCrashedError), outcome
    assert err.retryable is True and err.overloaded is False


async def test_rpc_caught_after_its_write_committed_fails_not_retryable(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "rpc-write")
    victim = await owner_of(rt, stub)
    outcome = await call_during_kill(
        rt, victim["pid"], lambda: stub.put_then_sleep("k", "written", 30)
    )
    err = outcome.get("error")
    assert isinstance(err, DurableObjectError), outcome
    assert err.retryable is False
    assert await eventually("the object after the crash", lambda: stub.get("k")) == "written"


async def test_a_worker_dying_right_after_its_commit_fails_the_call_not_retryable(
    stateroom_runtime,
):
    # The worker dies in the same step as its COMMIT, so its `Committed` frame never
    # leaves it: the supervisor learns of the write from the commit log it shares
    # with the worker, and the call is not retryable (the write is there).
    rt = stateroom_runtime
    stub = box(rt, "die-after-commit")
    with pytest.raises(DurableObjectError) as caught:
        await stub.put_then_die("k", "kept")
    assert caught.value.retryable is False, caught.value
    assert await eventually("the object after the crash", lambda: stub.get("k")) == "kept"


async def test_sdk_fetch_caught_by_a_worker_kill_is_503_with_retry_after(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "sdk-fetch")
    victim = await owner_of(rt, stub)
    url = f"{rt.url}/_stateroom/v1/fetch/BOX/{stub.id}/sleep/30"
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {rt.token}"}) as http:
        outcome = await call_during_kill(rt, victim["pid"], lambda: http.get(url, timeout=30))
    r = outcome["value"]
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    # The SDK stub raises the same error.
    await wait_replaced(rt, victim["index"], victim["pid"])
    outcome = await call_during_kill(
        rt, (await owner_of(rt, stub))["pid"], lambda: stub.fetch("/sleep/30")
    )
    assert isinstance(outcome.get("error"), DurableObjectError), outcome
    assert outcome["error"].retryable is True


@pytest.mark.parametrize("who", ["object's worker", "other worker"])
async def test_app_requests_caught_by_a_worker_kill_are_503_with_retry_after(
    stateroom_runtime, who
):
    rt = stateroom_runtime
    procs = await workers(rt)
    name = names_on_each_worker(procs, rt.namespace("BOX"))[0][0]
    victim = procs[0] if who == "object's worker" else procs[1]
    statuses = []
    async with httpx.AsyncClient(base_url=rt.url, timeout=30) as http:

        async def request():
            r = await http.get(f"/box/{name}/sleep/4")
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"

        async with trio.open_nursery() as nursery:
            # Default runs round-robin: one of these runs it on each worker.
            nursery.start_soon(request)
            nursery.start_soon(request)
            await trio.sleep(0.5)
            os.kill(victim["pid"], signal.SIGKILL)
        if who == "object's worker":
            assert statuses == [503, 503]
        else:
            # Default on the killed worker fails; Default next to the object finishes.
            assert sorted(statuses) == [200, 503]
        await wait_replaced(rt, victim["index"], victim["pid"])
        assert (await http.get(f"/box/{name}/put/k/v")).text == "v"


async def test_killing_a_supervisor_loses_no_acknowledged_write(stateroom_runtime):
    rt = stateroom_runtime
    acknowledged = {}
    async with trio.open_nursery() as nursery:

        async def writer(i):
            for j in range(10):
                await box(rt, f"s{i}").put(f"k{j}", j)
                acknowledged[(i, j)] = j

        for i in range(8):
            nursery.start_soon(writer, i)
    await rt.restart(kill=True)
    for (i, j), value in acknowledged.items():
        assert await box(rt, f"s{i}").get(f"k{j}") == value, f"object s{i} key k{j}"


async def test_workers_of_a_killed_supervisor_exit_by_themselves(stateroom_runtime):
    rt = stateroom_runtime
    pids = [p["pid"] for p in await workers(rt)]
    assert all(running(pid) for pid in pids)
    rt.process.send_signal(signal.SIGKILL)
    with trio.fail_after(5):
        while any(running(pid) for pid in pids):
            await trio.sleep(0.01)
    await rt.restart()
    assert await box(rt, "after").put("k", 1) == 1


@pytest.mark.stateroom(config=APP, workers=2, cpu_limit=120)
async def test_new_supervisor_fences_out_a_stuck_worker_of_the_old_one(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "stuck")
    await stub.put("k", "before")
    victim = await owner_of(rt, stub)

    async def hold():
        try:
            await stub.hold_gil()
        except Exception:  # noqa: BLE001 - the supervisor dies under this call
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.sleep(0.5)
        # The worker is inside one C call holding the GIL: it cannot notice its
        # supervisor's death, and its watchdog thread cannot run either.
        rt.process.send_signal(signal.SIGKILL)
        await trio.sleep(0.5)
        assert running(victim["pid"])
        nursery.cancel_scope.cancel()
    await rt.restart()
    assert not running(victim["pid"])
    assert await box(rt, "stuck").get("k") == "before"


async def test_a_second_supervisor_on_the_same_data_folder_is_refused(stateroom_runtime):
    rt = stateroom_runtime
    result = await trio.run_process(
        [sys.executable, "-m", "stateroom.supervisor", "--data", str(rt.data), "--port", "0"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert b"in use by a running supervisor" in result.stderr
    assert await box(rt, "still").put("k", 1) == 1
