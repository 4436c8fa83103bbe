"""Recovery times (issue 7 targets), with floors measured in the same run.

(a) `kill -9` of a worker -> next successful request on one of its objects:
    p50 / p99 over 20 kills                                   target <= 1 s
(b) supervisor start -> first request served, 10,000 objects on disk
                                                              target <= 2 s
Floors: a request on a live object (no kill), starting a bare Python that imports
trio (the least a worker restart costs), and (b) on an empty data folder.

Kills alternate between the two workers, 1 s apart, so no slot looks like it is
crash-looping (a slot restarts without delay unless its processes keep dying
within 1.5 s of starting; see `stateroom.supervisor.workers`).

Usage: python bench/recovery.py [--kills 20] [--objects 10000] [--starts 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pct, print_table  # noqa: E402

from stateroom import DurableObjectError  # noqa: E402
from stateroom.testing import Runtime, open_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COUNTER = str(ROOT / "examples" / "counter" / "stateroom.toml")


def python_start_floor(n: int = 5) -> float:
    """Median wall time of `python -c 'import trio'` (a worker's interpreter + trio)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import trio"], check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


async def owner_pid(rt: Runtime, stub) -> tuple[int, int]:
    procs = [p for p in await rt.processes() if p["role"] == "worker"]
    shards = sum(len(p["shards"]) for p in procs)
    shard = int(str(stub.id)[:8], 16) % shards
    p = next(p for p in procs if shard in p["shards"])
    return p["index"], p["pid"]


async def wait_ready(rt: Runtime, index: int, old_pid: int) -> None:
    with trio.fail_after(30):
        while True:
            for p in await rt.processes():
                if p.get("index") == index and p["pid"] != old_pid and p.get("state") == "ready":
                    return
            await trio.sleep(0.01)


async def bench_kills(kills: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="stateroom-bench-") as data:
        async with open_runtime(data, workers=2, config=COUNTER) as rt:
            ns = rt.client.namespace("COUNTER")
            # One object per worker slot.
            stubs: dict[int, object] = {}
            i = 0
            while len(stubs) < 2:
                stub = ns.get_by_name(f"recover-{i}")
                i += 1
                index, _ = await owner_pid(rt, stub)
                stubs.setdefault(index, stub)
            for stub in stubs.values():
                await stub.increment()
            live = []
            for _ in range(200):
                t0 = time.perf_counter()
                await stubs[0].get()
                live.append(time.perf_counter() - t0)
            recover, detect_to_ready = [], []
            for k in range(kills):
                stub = stubs[k % 2]
                index, pid = await owner_pid(rt, stub)
                await trio.sleep(1.0)
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                while True:
                    try:
                        await stub.get()
                        break
                    except DurableObjectError:
                        await trio.sleep(0.002)
                recover.append(time.perf_counter() - t0)
                await wait_ready(rt, index, pid)
                detect_to_ready.append(time.perf_counter() - t0)
            restarts = sum(p["restarts"] for p in await rt.processes() if p["role"] == "worker")
    return [
        {
            "measure": f"kill -9 -> next success ({kills} kills)",
            "p50 s": pct(recover, 50),
            "p99 s": pct(recover, 99),
            "max s": max(recover),
            "target": "<= 1 s",
        },
        {
            "measure": "floor: request on a live object",
            "p50 s": pct(live, 50),
            "p99 s": pct(live, 99),
            "max s": max(live),
            "target": "",
        },
        {
            "measure": f"floor: python -c 'import trio' (restarts seen: {restarts})",
            "p50 s": python_start_floor(),
            "p99 s": None,
            "max s": None,
            "target": "",
        },
    ]


async def fill(data: str, objects: int) -> None:
    """Create `objects` objects (one SQLite file each) through the runtime."""
    async with open_runtime(data, workers=2, config=COUNTER, durability="process") as rt:
        ns = rt.client.namespace("COUNTER")
        send, receive = trio.open_memory_channel(0)

        async def feeder():
            async with send:
                for i in range(objects):
                    await send.send(i)

        async def worker():
            async for i in receive:
                await ns.get_by_name(f"o{i}").increment()

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feeder)
            for _ in range(48):
                nursery.start_soon(worker)
        print(f"created {objects} objects in {time.perf_counter() - t0:.1f} s", flush=True)


async def time_start(data: str) -> tuple[float, float]:
    """(start -> listening line, start -> first request answered) on `data`."""
    async with trio.open_nursery() as nursery:
        rt = Runtime(Path(data), {"workers": 2})
        t0 = time.perf_counter()
        await rt.start(nursery)
        listening = time.perf_counter() - t0
        value = await rt.client.namespace("COUNTER").get_by_name("o1").get()
        first = time.perf_counter() - t0
        assert value >= 1
        await rt.stop()
        nursery.cancel_scope.cancel()
    return listening, first


async def bench_start(objects: int, starts: int) -> list[dict]:
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="stateroom-bench-") as full,
        tempfile.TemporaryDirectory(prefix="stateroom-bench-") as empty,
    ):
        await fill(full, objects)
        await fill(empty, 2)
        for label, data in (
            (f"{objects:,} objects on disk", full),
            ("floor: 2 objects on disk", empty),
        ):
            samples = [await time_start(data) for _ in range(starts)]
            rows.append(
                {
                    "measure": f"supervisor start -> first request ({label})",
                    "listening s": pct([s[0] for s in samples], 50),
                    "first request s": pct([s[1] for s in samples], 50),
                    "worst s": max(s[1] for s in samples),
                    "target": "<= 2 s" if "floor" not in label else "",
                }
            )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    print_table("worker crash recovery", await bench_kills(args.kills))
    print_table("supervisor start", await bench_start(args.objects, args.starts))


if __name__ == "__main__":
    trio.run(main)
