"""WebSockets under worker crashes (SPEC §7, §14): parked sockets stay open, and each
sender's messages reach the restarted object once each, in order."""

from __future__ import annotations

import os
import signal

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import APPS

APP = str(APPS / "websockets" / "stateroom.toml")
CLIENTS, MESSAGES = 6, 250


@pytest.mark.stateroom(config=APP, workers=2)
async def test_echoes_survive_repeated_worker_kills_once_each_and_in_order(stateroom_runtime):
    rt = stateroom_runtime
    got: dict[int, list[int]] = {i: [] for i in range(CLIENTS)}
    sent_all = trio.Event()
    done = [0]

    async def client(i: int) -> None:
        url = rt.url.replace("http://", "ws://") + f"/room/soak{i % 3}?who=c{i}"
        async with open_websocket_url(url) as ws:

            async def reader() -> None:
                while len(got[i]) < MESSAGES:
                    message = await ws.get_message()
                    if not message.startswith("closed:"):  # a roommate leaving
                        got[i].append(int(message))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for k in range(MESSAGES):
                    await ws.send_message(f"echo:{k}")
                    await trio.sleep(0.006)
        done[0] += 1
        if done[0] == CLIENTS:
            sent_all.set()

    shard = int(str(rt.namespace("ROOM").get_by_name("soak0").id)[:8], 16) % 256

    async def killer() -> None:
        for _ in range(2):
            await trio.sleep(0.5)
            if sent_all.is_set():
                return
            procs = await rt.processes()
            owner = next(p for p in procs if p["role"] == "worker" and shard in p["shards"])
            os.kill(owner["pid"], signal.SIGKILL)  # the worker owning room soak0

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client, i)
            nursery.start_soon(killer)
    for i, seq in got.items():
        assert seq == list(range(MESSAGES)), (
            f"client c{i}: expected 0..{MESSAGES - 1} once each, got {seq}"
        )
    restarts = sum(p["restarts"] for p in await rt.processes() if p["role"] == "worker")
    assert restarts >= 1
