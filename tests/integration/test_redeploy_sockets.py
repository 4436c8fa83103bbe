"""Accepted WebSockets survive a redeploy (SPEC §7): the connection stays open in the
supervisor, and the next message reaches an instance of the new code, whether the
object was hibernated or active at the redeploy, also when its class was renamed."""

from __future__ import annotations

import pytest
import trio

from tests.integration.appgen import write_room_app


async def objects_active(rt) -> int:
    return sum(p["objects_active"] for p in await rt.processes() if p["role"] == "worker")


async def wait_objects_active(rt, predicate, what: str) -> None:
    with trio.fail_after(30):
        while not predicate(await objects_active(rt)):
            await trio.sleep(0.05)


async def exchange(ws, text: str) -> str:
    await ws.send_message(text)
    with trio.fail_after(15):
        return await ws.get_message()


@pytest.mark.stateroom(workers=2, hibernate_after=1)
async def test_hibernated_socket_stays_open_across_a_redeploy_and_reaches_the_new_class(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_room_app(tmp_path / "v1", version="v1"))
    stub = rt.namespace("ROOM").get_by_name("lobby")
    async with stub.web_socket("/ws") as ws:
        assert await exchange(ws, "a") == "v1:a"
        await wait_objects_active(rt, lambda n: n >= 1, "the room to be active")
        await wait_objects_active(rt, lambda n: n == 0, "the room to hibernate")
        await rt.deploy(write_room_app(tmp_path / "v2", version="v2"))
        assert await exchange(ws, "b") == "v2:b"
        assert await exchange(ws, "c") == "v2:c"
    assert await stub.version() == "v2"


@pytest.mark.stateroom(workers=2)
async def test_active_socket_stays_open_across_a_redeploy_that_renames_its_class(
    stateroom_runtime, tmp_path
):
    rt = stateroom_runtime
    await rt.deploy(write_room_app(tmp_path / "v1", version="v1"))
    stub = rt.namespace("ROOM").get_by_name("hall")
    async with stub.web_socket("/ws") as ws:
        assert await exchange(ws, "a") == "v1:a"
        await rt.deploy(
            write_room_app(tmp_path / "v2", version="v2", class_name="Hall", renamed_from="Room")
        )
        assert await exchange(ws, "b") == "v2:b"
    assert str(rt.namespace("ROOM").get_by_name("hall").id) == str(stub.id)
