"""The testing kit `stateroom.testing` (SPEC §13) as a user's own tests use it.

The fixture comes from the `pytest11` entry point (nothing is imported from the kit
here); `run_in_object` ships a function by value into the worker owning the object
and runs it there as one of the object's events.
"""

import importlib.metadata

import httpx
import pytest
import trio

from stateroom import DurableObjectError, WorkerCrashedError
from tests.conftest import EXAMPLES

COUNTER = str(EXAMPLES / "counter" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=COUNTER, workers=2, fault_injection=True)

LIMIT = 3  # a module global the shipped function reads: it travels by value too


def count_of(instance, ctx):
    return ctx.storage.kv.get("count")


def test_the_plugin_is_registered_through_the_pytest11_entry_point():
    points = importlib.metadata.entry_points(group="pytest11")
    assert any(p.value == "stateroom.testing" for p in points)


async def test_run_in_object_runs_sync_and_async_functions_inside_the_object(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.client.namespace("COUNTER").get_by_name("kit")
    await counter.increment(5)
    assert await rt.run_in_object(counter, count_of) == 5

    async def peek(instance, ctx):
        await trio.sleep(0.001)
        return {
            "class": type(instance).__name__,
            "same_ctx": instance.ctx is ctx,
            "id": str(ctx.id),
            "name": ctx.id.name,
            "count": await ctx.storage.get("count"),
            "limit": LIMIT,
        }

    info = await rt.run_in_object(counter, peek)
    assert info == {
        "class": "Counter",
        "same_ctx": True,
        "id": str(counter.id),
        "name": "kit",
        "count": 5,
        "limit": LIMIT,
    }


async def test_writes_made_by_run_in_object_commit_like_any_event(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.client.namespace("COUNTER").get_by_name("seeded")
    await rt.run_in_object(counter, lambda instance, ctx: ctx.storage.kv.put("count", 41))
    assert await counter.increment() == 42
    await rt.kill_worker(counter)
    assert await counter.get() == 42


async def test_run_in_object_raises_what_the_function_raises(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.client.namespace("COUNTER").get_by_name("raising")

    def fail(instance, ctx):
        raise KeyError("missing thing")

    with pytest.raises(KeyError, match="missing thing"):
        await rt.run_in_object(counter, fail)
    with pytest.raises(TypeError, match="cannot travel back"):
        await rt.run_in_object(counter, lambda instance, ctx: object())
    with pytest.raises(TypeError):
        await rt.run_in_object(counter, "not a function")
    # The object is fine afterwards.
    assert await counter.increment() == 1


async def test_list_object_ids_deploy_url_and_client(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.client.namespace("COUNTER")
    for name in ("a", "b", "c"):
        await ns.get_by_name(name).increment()
    ids = await rt.list_object_ids("COUNTER")
    assert sorted(ids) == sorted(str(ns.id_from_name(n)) for n in ("a", "b", "c"))
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/a")).text == "2"
    result = await rt.deploy(COUNTER)
    assert result["version"] == 2


async def test_kill_worker_by_index_and_by_object_and_restart_keep_the_data(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.client.namespace("COUNTER").get_by_name("survivor")
    await counter.increment(3)
    old = {p["index"]: p["pid"] for p in await rt.processes() if p["role"] == "worker"}
    killed = await rt.kill_worker(1)
    assert killed == old[1]
    await rt.kill_worker(counter)
    await rt.restart()
    assert await rt.client.namespace("COUNTER").get_by_name("survivor").get() == 3


async def test_inject_crashes_the_owning_worker_at_the_point(stateroom_runtime):
    rt = stateroom_runtime
    counter = rt.client.namespace("COUNTER").get_by_name("injected")
    await counter.increment()
    await rt.inject("before_commit", counter)
    with pytest.raises(WorkerCrashedError) as info:
        await counter.increment()
    assert info.value.retryable is True
    with trio.fail_after(20):
        while True:
            try:
                assert await counter.get() == 1
                break
            except DurableObjectError:
                await trio.sleep(0.05)
