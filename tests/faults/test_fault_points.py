"""Fault injection (SPEC §13) and what each crash point means (SPEC §14).

* `before_commit`: the event's writes are made, not committed: the call fails
  retryable and the writes are never visible; read-only events never get there.
* `after_commit`: committed, reply not sent: the call fails *not* retryable, the
  write is visible.
* `before_reply`: the reply is ready (writes durable): like `after_commit` for a
  write, retryable for a read.
* `during_alarm`: the alarm handler is cut short and the alarm runs again.
* `during_socket_delivery`: the socket stays open (parked in the supervisor) and
  the next message is handled by a fresh instance.
* `times=K` crashes K times (across the restarts it causes), a probability below 1
  crashes some of the time, `times=0` disarms; the route is 404 without
  `--fault-injection`, 400 for an unknown point, 404 for an unknown binding.
"""

import httpx
import pytest
import trio

from stateroom import DurableObjectError, WorkerCrashedError
from tests.conftest import APPS

from .helpers import APP, box, eventually, owner_of, wait_replaced

pytestmark = pytest.mark.stateroom(config=APP, workers=2, fault_injection=True)


async def crashes(call):
    with pytest.raises(WorkerCrashedError) as info:
        await call()
    return info.value


async def test_crash_before_commit_fails_retryable_and_the_write_is_never_visible(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = box(rt, "before-commit")
    await stub.put("k", "old")
    victim = await owner_of(rt, stub)
    await rt.inject("before_commit", stub)
    err = await crashes(lambda: stub.put("k", "new"))
    assert err.retryable is True
    await wait_replaced(rt, victim["index"], victim["pid"])
    assert await stub.get("k") == "old"


async def test_read_only_events_never_reach_before_commit(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "read-only")
    await rt.inject("before_commit", stub)
    for _ in range(3):
        assert await stub.get("k") is None
    # Still armed: the first write crashes.
    err = await crashes(lambda: stub.put("k", "v"))
    assert err.retryable is True


async def test_crash_after_commit_fails_not_retryable_and_the_write_is_visible(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = box(rt, "after-commit")
    await rt.inject("after_commit", stub)
    err = await crashes(lambda: stub.put("k", "new"))
    assert err.retryable is False
    assert await eventually("the object after the crash", lambda: stub.get("k")) == "new"


async def test_crash_before_reply_fails_not_retryable_after_a_write_and_retryable_after_a_read(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = box(rt, "before-reply")
    await rt.inject("before_reply", stub)
    err = await crashes(lambda: stub.put("k", "new"))
    assert err.retryable is False
    assert await eventually("the object after the crash", lambda: stub.get("k")) == "new"
    await rt.inject("before_reply", stub)
    err = await crashes(lambda: stub.get("k"))
    assert err.retryable is True


async def test_crash_points_are_reached_through_default_and_the_sdk_fetch_route(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = box(rt, "over-http")
    async with httpx.AsyncClient(base_url=rt.url, timeout=30) as http:
        await rt.inject("before_commit", stub)
        r = await http.get("/box/over-http/put/k/v1")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        await rt.inject("after_commit", stub)
        r = await http.get("/box/over-http/put/k/v2")
        assert r.status_code == 500, r.text
        assert await eventually("the object", lambda: stub.get("k")) == "v2"
        await rt.inject("before_commit", stub)
        with pytest.raises(DurableObjectError) as info:
            await stub.fetch("/put/k/v3")
        assert info.value.retryable is True
    assert await eventually("the object", lambda: stub.get("k")) == "v2"


async def test_times_k_crashes_k_times_across_the_restarts_it_causes(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "three-times")
    await rt.inject("before_commit", stub, times=3)
    for attempt in range(3):
        err = await crashes(lambda: stub.put("k", "v"))
        assert err.retryable is True, f"attempt {attempt}"
    assert await eventually("the fourth write", lambda: stub.put("k", "v")) == "v"
    assert await stub.get("k") == "v"


async def test_a_probability_crashes_some_of_the_time_and_times_zero_disarms(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "coin")
    await rt.inject("before_commit", stub, times=0.5)

    async def served():
        await stub.get("k")
        return True

    outcomes = []
    for i in range(12):  # P(no crash at all) = 2**-12
        try:
            await eventually("the object", served)
            await stub.put("k", i)
            outcomes.append("ok")
        except WorkerCrashedError as exc:
            assert exc.retryable is True
            outcomes.append("crash")
    assert "crash" in outcomes, outcomes
    await rt.inject("before_commit", stub, times=0)
    await eventually("the object", served)
    for i in range(5):
        assert await stub.put("k", i) == i


async def test_crash_during_an_alarm_runs_the_alarm_again(stateroom_runtime):
    rt = stateroom_runtime
    stub = box(rt, "alarmed")
    await rt.inject("during_alarm", stub)
    await stub.arm_alarm(100)

    async def ran():
        return await stub.get("alarms")

    assert await eventually("the alarm to run after the crash", ran, timeout=30) == 1


@pytest.mark.stateroom(
    config=str(APPS / "websockets" / "stateroom.toml"), workers=2, fault_injection=True
)
async def test_crash_during_socket_delivery_keeps_the_socket_and_the_next_message_is_handled(
    stateroom_runtime,
):
    rt = stateroom_runtime
    stub = rt.namespace("ROOM").get_by_name("crashy")
    victim = await owner_of(rt, stub)
    async with stub.web_socket("/?who=a") as ws:
        await ws.send_message("echo:first")
        assert await ws.get_message() == "first"
        await rt.inject("during_socket_delivery", stub)
        await ws.send_message("echo:lost")
        await wait_replaced(rt, victim["index"], victim["pid"])
        with trio.fail_after(10):
            while True:
                await ws.send_message("echo:again")
                message = await ws.get_message()
                if message == "again":
                    break


async def test_route_refuses_unknown_points_and_bindings_and_lists_what_is_armed(
    stateroom_runtime,
):
    rt = stateroom_runtime
    headers = {"authorization": f"Bearer {rt.token}"}
    async with httpx.AsyncClient(base_url=rt.url, headers=headers) as http:
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "nope", "binding": "BOX", "name": "a"}
        )
        assert r.status_code == 400 and "unknown fault point" in r.text
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "before_commit", "binding": "NOPE", "name": "a"}
        )
        assert r.status_code == 404
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "before_commit", "binding": "BOX"}
        )
        assert r.status_code == 400
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "before_commit", "binding": "BOX", "id": "zz"}
        )
        assert r.status_code == 400
        r = await http.post("/_stateroom/v1/faults", content=b"not json")
        assert r.status_code == 400
        r = await http.post(
            "/_stateroom/v1/faults",
            json={"point": "after_commit", "binding": "BOX", "name": "a", "times": 2},
        )
        assert r.status_code == 200
        listing = (await http.get("/_stateroom/v1/faults")).json()["faults"]
        assert [(f["point"], f["times"]) for f in listing] == [("after_commit", 2)]
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "before_commit", "binding": "BOX", "name": "a"}
        )
        assert r.status_code == 200
        r = await http.post("/_stateroom/v1/faults")
        assert r.status_code == 400
        r = await http.post(
            "/_stateroom/v1/faults",
            json={"point": "after_commit", "binding": "BOX", "name": "a", "times": 1.5},
        )
        assert r.status_code == 400
        r = await http.post(
            "/_stateroom/v1/faults",
            json={"point": "before_commit", "binding": "BOX", "name": "a", "times": 0},
        )
        assert r.status_code == 200
        r = await http.post(
            "/_stateroom/v1/faults",
            json={"point": "after_commit", "binding": "BOX", "name": "a", "times": 0},
        )
        listing = (await http.get("/_stateroom/v1/faults")).json()["faults"]
        assert listing == []
    # Nothing armed any more: writes go through.
    assert await box(rt, "a").put("k", 1) == 1


@pytest.mark.stateroom(config=APP, workers=2)
async def test_route_is_404_without_fault_injection(stateroom_runtime):
    rt = stateroom_runtime
    headers = {"authorization": f"Bearer {rt.token}"}
    async with httpx.AsyncClient(base_url=rt.url, headers=headers) as http:
        r = await http.post(
            "/_stateroom/v1/faults", json={"point": "before_commit", "binding": "BOX", "name": "a"}
        )
        assert r.status_code == 404 and "--fault-injection" in r.text
        r = await http.post(
            "/_stateroom/v1/faults",
            json={"point": "before_commit", "binding": "BOX", "name": "a"},
            headers={"authorization": "Bearer wrong"},
        )
        assert r.status_code == 401
