"""The input gate state machine (worker/gates.py), without processes."""

import pytest
import trio
import trio.testing

from stateroom.worker.gates import InputGate


async def test_entering_an_open_gate_does_not_yield():
    gate = InputGate()
    with trio.testing.assert_no_checkpoints():
        async with gate:
            assert gate.locked() and gate.held_by_current_task()
        await gate.wait_open()
    assert not gate.locked()


async def test_the_holder_may_enter_again_without_deadlock():
    gate = InputGate()
    async with gate:
        async with gate:
            assert gate.depth == 2
        assert gate.locked()
    assert not gate.locked() and gate.depth == 0


async def test_others_wait_until_the_holder_leaves():
    gate = InputGate()
    order: list[str] = []

    async def other(name: str) -> None:
        await gate.wait_open()
        order.append(f"{name} passed")

    async def holder(task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with gate:
            task_status.started()
            await trio.testing.wait_all_tasks_blocked()
            order.append("holder leaves")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(holder)
            nursery.start_soon(other, "a")
            nursery.start_soon(other, "b")
    assert order[0] == "holder leaves"
    assert sorted(order[1:]) == ["a passed", "b passed"]


async def test_two_tasks_never_hold_the_gate_together():
    gate = InputGate()
    inside = 0
    peak = 0

    async def worker() -> None:
        nonlocal inside, peak
        for _ in range(20):
            async with gate:
                inside += 1
                peak = max(peak, inside)
                await trio.lowlevel.checkpoint()
                inside -= 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(worker)
    assert peak == 1


@pytest.mark.parametrize("depth", [1, 3])
async def test_an_error_inside_releases_the_gate(depth):
    gate = InputGate()

    async def enter(n: int) -> None:
        async with gate:
            if n > 1:
                await enter(n - 1)
            else:
                raise RuntimeError("inside")

    with pytest.raises(RuntimeError):
        await enter(depth)
    assert not gate.locked() and gate.released.is_set()
