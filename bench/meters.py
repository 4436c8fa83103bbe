"""Metering overhead and the cost of process sampling (issue 6 targets).

(a) HTTP counter through `Default`, 32 wrk clients over 100 objects. Two runtimes
    run side by side for the whole benchmark, one with meters on and one with
    meters off (`STATEROOM_METERS=0`: no CPU charging, no reports; the baseline),
    and are loaded in turn: rounds go on, off, off, on, on, off, … so each pair of
    neighbouring rounds sees the same machine, and a drift in background load
    (two other engineers share these 2 cores) cancels out. Reported: the median
    of the per-pair ratios on/off and their spread. Target: meters cost <= 5 % of
    throughput.
    Two figures per round: throughput (wrk req/s), which swings with whatever else
    runs on the machine, and the steadier CPU time per request of the worker
    processes and of the supervisor (psutil user + system time over the round,
    divided by the requests wrk completed), which counts the work metering adds
    rather than how much CPU happened to be free.
(b) the same pairs with one sequential client (p50 latency).
(c) one sampling round of the process sampler for 16 workers (+ the supervisor):
    16 real child processes, `ProcessSampler.sample_round()` and the per-process
    `sample()` that `/v1/processes` does; and `GET /_stateroom/v1/processes` on a
    runtime with 16 workers.
(d) in-process: the CPU cost of one task step, plain and inside an event's
    wrapper (the CPU limit's, which also feeds the CPU meter) with meters off and
    on, and of one worker report over 1000 busy objects.

Usage: python bench/meters.py [--seconds 4] [--pairs 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MANY_OBJECTS_WRK, median, pct, print_table, sequential, wrk  # noqa: E402

from stateroom.supervisor.processes import ProcessSampler  # noqa: E402
from stateroom.testing import Runtime, open_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "examples" / "counter" / "stateroom.toml")


@contextlib.asynccontextmanager
async def open_metered_runtime(meters: bool, workers: int) -> Any:
    """A counter runtime whose processes start with `STATEROOM_METERS` set to `meters`."""
    old = os.environ.get("STATEROOM_METERS")
    os.environ["STATEROOM_METERS"] = "1" if meters else "0"
    try:
        cm = open_runtime(workers=workers, config=CONFIG)
        rt = await cm.__aenter__()
    finally:
        # The supervisor copied the environment at spawn (its workers inherit it).
        if old is None:
            os.environ.pop("STATEROOM_METERS", None)
        else:
            os.environ["STATEROOM_METERS"] = old
    try:
        yield rt
    finally:
        await cm.__aexit__(None, None, None)


async def cpu_seconds(rt: Runtime) -> dict[str, float]:
    """User + system CPU seconds of the supervisor and of all workers (psutil)."""
    pids = await rt.worker_pids()

    def read() -> dict[str, float]:
        def cpu(pid: int) -> float:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system

        assert rt.process is not None
        return {"supervisor": cpu(rt.process.pid), "workers": sum(cpu(p) for p in pids)}

    return await trio.to_thread.run_sync(read)


async def one_round(rt: Runtime, args: argparse.Namespace) -> dict[str, float]:
    """Load `rt` for one round: throughput and CPU per request, then sequential latency."""
    before = await cpu_seconds(rt)
    many = await trio.to_thread.run_sync(
        lambda: wrk(rt.url + "/", connections=32, seconds=args.seconds, script=MANY_OBJECTS_WRK)
    )
    after = await cpu_seconds(rt)
    seq = await trio.to_thread.run_sync(sequential, rt.port, args.requests)
    done = many.get("requests", float("nan"))
    return {
        "rps": many.get("rps", float("nan")),
        "worker_us": (after["workers"] - before["workers"]) / done * 1e6,
        "supervisor_us": (after["supervisor"] - before["supervisor"]) / done * 1e6,
        "seq_p50": seq["p50_ms"],
        "requests": done + args.requests + 200,
    }


async def overhead(args: argparse.Namespace) -> None:
    rounds: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    async with (
        open_metered_runtime(True, args.workers) as on,
        open_metered_runtime(False, args.workers) as off,
    ):
        runtimes = {True: on, False: off}
        # Warm up both: every object created, code paths hot.
        for rt in (on, off):
            await trio.to_thread.run_sync(
                lambda rt=rt: wrk(rt.url + "/", connections=32, seconds=2, script=MANY_OBJECTS_WRK)
            )
        for i in range(args.pairs):
            # on, off | off, on | on, off | ... : each pair's two rounds are neighbours.
            for meters in (True, False) if i % 2 == 0 else (False, True):
                rounds[meters].append(await one_round(runtimes[meters], args))
        billed = (await on.client.billing())["total"]["requests"]
        unbilled = (await off.client.billing())["total"]["requests"]
    served = sum(r["requests"] for r in rounds[True])

    rows = []
    for key, label, cost_is in [
        ("rps", "(a) 32 clients, 100 objects: req/s", "lower"),
        ("worker_us", "(a) worker CPU µs per request (all workers)", "higher"),
        ("supervisor_us", "(a) supervisor CPU µs per request", "higher"),
        ("seq_p50", "(b) one sequential client: p50 ms", "higher"),
    ]:
        ratios = sorted(
            a[key] / b[key] for a, b in zip(rounds[True], rounds[False], strict=True) if b[key]
        )
        ratio = median(ratios)
        cost = (1 - ratio) if cost_is == "lower" else (ratio - 1)
        rows.append(
            {
                "figure": label,
                "meters on": median([r[key] for r in rounds[True]]),
                "meters off (baseline)": median([r[key] for r in rounds[False]]),
                "on/off (median of pairs)": ratio,
                "pairs min..max": f"{ratios[0]:.3f}..{ratios[-1]:.3f}" if ratios else "",
                "meters cost %": cost * 100,
                "target": "<= 5 %" if key in ("rps", "worker_us", "supervisor_us") else "",
            }
        )
    print_table(
        f"bench/meters.py — workers={args.workers}, {args.pairs} pairs of {args.seconds:g} s rounds"
        f" (on/off alternating, two runtimes side by side); billed requests with meters on:"
        f" {int(billed):,} of {int(served):,} served in rounds (+ warm-up); with meters off:"
        f" {int(unbilled)}",
        rows,
    )


def sampling_cost(n_procs: int = 16, rounds: int = 300) -> dict[str, float]:
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        for _ in range(n_procs)
    ]
    try:
        pids = [os.getpid(), *(c.pid for c in children)]
        sampler = ProcessSampler(lambda: pids)
        sampler.sample_round()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            sampler.sample_round()
            times.append(time.perf_counter() - t)
        reads = []
        for _ in range(rounds):
            t = time.perf_counter()
            for pid in pids:
                sampler.sample(pid)
            reads.append(time.perf_counter() - t)
        return {
            "round_ms": median(times) * 1e3,
            "round_p99_ms": pct(times, 99) * 1e3,
            "read_ms": median(reads) * 1e3,
        }
    finally:
        for c in children:
            c.kill()
            c.wait()


async def processes_api_cost(n: int = 100) -> dict[str, float]:
    async with open_runtime(workers=16) as rt:
        async with httpx.AsyncClient(
            base_url=rt.url, headers={"authorization": f"Bearer {rt.token}"}
        ) as http:
            for _ in range(10):
                await http.get("/_stateroom/v1/processes")
            lat = []
            for _ in range(n):
                t = time.perf_counter()
                r = await http.get("/_stateroom/v1/processes")
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200 and len(r.json()["processes"]) == 17
        return {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


async def wrapper_cost(steps: int = 200_000) -> dict[str, float]:
    """Process CPU per task step: plain, and inside an event's wrapper (the CPU limit's,
    which also feeds the CPU meter) with meters off and on (in-process)."""
    import types

    from stateroom.worker import limits
    from stateroom.worker.catalog import Counters

    watchdog = limits.Watchdog(types.SimpleNamespace(index=0), cpu_limit=30.0)
    host = types.SimpleNamespace(counters=Counters())

    async def stepper() -> None:
        for _ in range(steps):
            await trio.lowlevel.checkpoint()

    async def wrapped() -> None:
        await watchdog.metered(host, stepper())

    out = {}
    metering = limits.METERS
    try:
        for name, fn, meters in (
            ("plain", stepper, metering),
            ("event, meters off", wrapped, False),
            ("event, meters on", wrapped, True),
        ):
            limits.METERS = meters
            best = float("inf")
            for _ in range(3):
                t = time.process_time()
                await fn()
                best = min(best, time.process_time() - t)
            out[name] = best / steps * 1e6
    finally:
        limits.METERS = metering
    return out


def take_cost(objects: int = 1000, rounds: int = 50) -> float:
    """ms for one worker report over `objects` live objects that all did work."""
    import tempfile
    import types

    from stateroom.worker.catalog import Counters
    from stateroom.worker.meters import WorkerMeters

    with tempfile.TemporaryDirectory() as d:
        hosts = {}
        for i in range(objects):
            path = Path(d) / "objects" / "1" / f"{i:064x}.sqlite"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 4096)
            db = types.SimpleNamespace(path=path, size_bytes=lambda p=path: p.stat().st_size)
            h = type("Host", (), {})()
            h.counters, h.db, h.instance = Counters(), db, object()
            h.target = types.SimpleNamespace(id=f"{i:064x}")
            hosts[i] = h
        meters = WorkerMeters(types.SimpleNamespace(catalog=hosts), enabled=True)
        for h in hosts.values():
            meters.activated(h)
        times = []
        for _ in range(rounds):
            for h in hosts.values():
                h.counters.requests += 1
            t = time.perf_counter()
            rows = meters.take()
            times.append(time.perf_counter() - t)
            assert len(rows) == objects
        return median(times) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    await overhead(args)
    wrap = await wrapper_cost()
    take_ms = await trio.to_thread.run_sync(take_cost)
    print_table(
        "(d) in-process costs of metering (process CPU, best of 3)",
        [
            {"figure": "task step, plain", "µs": wrap["plain"]},
            {
                "figure": "task step of an event (CPU limit), meters off",
                "µs": wrap["event, meters off"],
            },
            {
                "figure": "task step of an event (CPU limit), meters on",
                "µs": wrap["event, meters on"],
            },
            {
                "figure": "worker report take(), 1000 busy objects (once a second)",
                "µs": take_ms * 1e3,
            },
        ],
    )
    samp = await trio.to_thread.run_sync(sampling_cost)
    api = await processes_api_cost()
    print_table(
        "process sampling, 16 workers + supervisor",
        [
            {
                "figure": "(c) sample_round() (CPU% window of 17 processes)",
                "ms": samp["round_ms"],
                "p99 ms": samp["round_p99_ms"],
            },
            {
                "figure": "(c) sample() x17 (cpu_seconds + rss, as /v1/processes)",
                "ms": samp["read_ms"],
                "p99 ms": "",
            },
            {
                "figure": "(c) GET /_stateroom/v1/processes, 16-worker runtime",
                "ms": api["p50_ms"],
                "p99 ms": api["p99_ms"],
            },
        ],
    )


if __name__ == "__main__":
    trio.run(main)
