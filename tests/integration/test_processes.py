"""The processes API (SPEC §12): fields, units, and CPU figures that follow real load."""

import os

import psutil
import pytest
import trio

from tests.conftest import APPS

METERS_APP = str(APPS / "meters" / "stateroom.toml")
FIELDS = {
    "pid",
    "role",
    "shards",
    "cpu_percent",
    "cpu_seconds",
    "rss_bytes",
    "objects_active",
    "sockets_parked",
    "restarts",
    "uptime_s",
}


async def object_on_worker(rt, index, prefix):
    procs = await rt.processes()
    shards = set(next(p for p in procs if p.get("index") == index)["shards"])
    ns = rt.namespace("METER")
    for i in range(10_000):
        stub = ns.get_by_name(f"{prefix}-{i}")
        if int(str(stub.id)[:8], 16) % 256 in shards:
            return stub
    raise AssertionError(f"no name maps to worker {index}")


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_processes_report_every_field_in_its_unit(stateroom_runtime):
    rt = stateroom_runtime
    await rt.namespace("METER").get_by_name("a").hit()
    procs = await rt.processes()
    roles = [p["role"] for p in procs]
    assert roles.count("supervisor") == 1 and roles.count("worker") == 2, roles
    all_shards = []
    for p in procs:
        assert FIELDS <= set(p), f"{p['role']} lacks {FIELDS - set(p)}"
        real = psutil.Process(p["pid"])
        assert isinstance(p["cpu_percent"], float) and p["cpu_percent"] >= 0
        assert isinstance(p["cpu_seconds"], float)
        t = real.cpu_times()
        # Seconds, not ms or ticks: within a second of what the OS says.
        assert abs(p["cpu_seconds"] - (t.user + t.system)) < 1.0, (p, t)
        # Bytes: the same order as the OS's RSS (it moves a little between reads).
        rss = real.memory_info().rss
        assert isinstance(p["rss_bytes"], int) and 0.5 * rss < p["rss_bytes"] < 2 * rss, (p, rss)
        assert isinstance(p["uptime_s"], float) and 0 < p["uptime_s"] < 300
        assert isinstance(p["restarts"], int) and p["restarts"] == 0
        assert isinstance(p["objects_active"], int) and isinstance(p["sockets_parked"], int)
        assert isinstance(p["shards"], list)
        all_shards += p["shards"]
    assert sorted(all_shards) == list(range(256))
    sup = next(p for p in procs if p["role"] == "supervisor")
    assert sup["shards"] == [] and sup["pid"] == rt.process.pid != os.getpid()


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_loaded_worker_cpu_grows_and_idle_worker_cpu_does_not(stateroom_runtime):
    rt = stateroom_runtime
    busy = await object_on_worker(rt, 0, "busy")
    await busy.hit()
    before = {p.get("index"): p for p in await rt.processes() if p["role"] == "worker"}
    await busy.burn(1.5)
    with trio.fail_after(20):
        while True:
            after = {p.get("index"): p for p in await rt.processes() if p["role"] == "worker"}
            if after[0]["cpu_percent"] >= 10:  # a busy core, even on a shared machine
                break
            await trio.sleep(0.1)
    loaded = after[0]["cpu_seconds"] - before[0]["cpu_seconds"]
    idle = after[1]["cpu_seconds"] - before[1]["cpu_seconds"]
    assert loaded >= 1.3, f"worker 0 ran a 1.5 s CPU burn but grew {loaded:.3f} s"
    assert idle < 0.3, f"idle worker 1 grew {idle:.3f} s"
    assert after[0]["cpu_percent"] >= 10 and after[0]["pid"] == before[0]["pid"]


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_cpu_percent_settles_back_when_the_load_stops(stateroom_runtime):
    rt = stateroom_runtime
    busy = await object_on_worker(rt, 1, "spin")
    await busy.burn(1.2)
    with trio.fail_after(20):
        while True:
            w1 = next(p for p in await rt.processes() if p.get("index") == 1)
            if w1["cpu_percent"] < 20:
                break
            await trio.sleep(0.2)
