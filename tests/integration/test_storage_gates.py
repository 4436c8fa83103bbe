"""Input gate, write coalescing and output gate seen from outside (SPEC §6)."""

import pytest
import trio

from tests.conftest import APPS

APP = str(APPS / "storage" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=APP, workers=2)


async def hammer(stub, method: str, n: int) -> list:
    results: list = []

    async def one() -> None:
        results.append(await getattr(stub, method)())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
    return results


async def test_concurrent_read_modify_write_never_loses_an_update(stateroom_runtime):
    s = stateroom_runtime.namespace("STORE").get_by_name("rmw")
    results = await hammer(s, "incr", 200)
    # Each increment saw every earlier one: the answers are exactly 1..200.
    assert sorted(results) == list(range(1, 201))
    assert await s.call("get", "n") == 200


async def test_transaction_and_block_concurrency_while_hold_other_events(stateroom_runtime):
    rt = stateroom_runtime
    s = rt.namespace("STORE").get_by_name("held")
    # Both bodies await a non-storage sleep between the read and the write; the
    # closed input gate keeps every other increment out meanwhile.
    results = await hammer(s, "incr_in_transaction", 40)
    assert sorted(results) == list(range(1, 41))
    results = await hammer(s, "incr_blocking", 40)
    assert sorted(results) == list(range(41, 81))
    assert await s.call("get", "n") == 80


async def test_many_objects_interleave_without_interference(stateroom_runtime):
    rt = stateroom_runtime
    stubs = [rt.namespace("STORE").get_by_name(f"obj-{i}") for i in range(8)]

    async def run(stub) -> None:
        await hammer(stub, "incr", 25)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for stub in stubs:
                nursery.start_soon(run, stub)
    for stub in stubs:
        assert await stub.call("get", "n") == 25


async def test_objects_committing_at_once_lose_no_acknowledged_write(stateroom_runtime):
    # 40 objects written concurrently: their commits fall due together and run on
    # the committer's threads (full durability). Every answer seen must survive a
    # kill -9 of every process, and each object's increments stay exact.
    rt = stateroom_runtime
    stubs = [rt.namespace("STORE").get_by_name(f"many-{i}") for i in range(40)]
    seen: dict[int, list[int]] = {i: [] for i in range(40)}

    async def run(i: int) -> None:
        seen[i].extend(await hammer(stubs[i], "incr", 10))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(run, i)
    for i in range(40):
        assert sorted(seen[i]) == list(range(1, 11)), f"object many-{i}"
    await rt.restart(kill=True)
    stubs = [rt.namespace("STORE").get_by_name(f"many-{i}") for i in range(40)]
    for i, stub in enumerate(stubs):
        assert await stub.call("get", "n") == 10, f"object many-{i}"
