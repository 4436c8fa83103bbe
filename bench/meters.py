"""Metering overhead and the cost of process sampling (issue 6 targets).

(a) HTTP counter through `Default`, 32 wrk clients over 100 objects, with meters
    on and off (`STATEROOM_METERS=0`: no CPU instrument, no reports) in the same
    run, alternating rounds; target: meters cost <= 5 % of throughput.
(b) the same with one sequential client (latency p50/p99).
(c) one sampling round of the process sampler for 16 workers (+ the supervisor):
    16 real child processes, `ProcessSampler.sample_round()` and the per-process
    `sample()` that `/v1/processes` does; and `GET /_stateroom/v1/processes` on a
    runtime with 16 workers.
(d) in-process: the CPU cost of one task step with and without the CPU meter
    wrapper, and of one worker report over 1000 busy objects.

Usage: python bench/meters.py [--seconds 6] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MANY_OBJECTS_WRK, median, pct, print_table, sequential, wrk  # noqa: E402

from stateroom.supervisor.processes import ProcessSampler  # noqa: E402
from stateroom.testing import open_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def one_round(meters: bool, args: argparse.Namespace) -> dict[str, float]:
    old = os.environ.get("STATEROOM_METERS")
    os.environ["STATEROOM_METERS"] = "1" if meters else "0"
    try:
        async with open_runtime(
            workers=args.workers, config=str(ROOT / "examples" / "counter" / "stateroom.toml")
        ) as rt:
            before = await rt.processes()
            many = await trio.to_thread.run_sync(
                lambda: wrk(
                    rt.url + "/", connections=32, seconds=args.seconds, script=MANY_OBJECTS_WRK
                )
            )
            after = await rt.processes()
            seq = await trio.to_thread.run_sync(sequential, rt.port, args.requests)
            billed = (await rt.client.billing())["total"]["requests"]
    finally:
        if old is None:
            os.environ.pop("STATEROOM_METERS", None)
        else:
            os.environ["STATEROOM_METERS"] = old
    requests = many.get("rps", 0.0) * max(1, int(args.seconds))

    def cpu(procs: list, role: str | None) -> float:
        return sum(p["cpu_seconds"] for p in procs if role is None or p["role"] == role)

    return {
        "many_rps": many.get("rps", 0.0),
        "worker_us": (cpu(after, "worker") - cpu(before, "worker")) / requests * 1e6,
        "all_us": (cpu(after, None) - cpu(before, None)) / requests * 1e6,
        "seq_rps": seq["rps"],
        "seq_p50": seq["p50_ms"],
        "seq_p99": seq["p99_ms"],
        "billed": billed,
    }


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
    """Process CPU per task step of a plain task and of a `charged` one (in-process)."""
    from stateroom.worker.catalog import Counters
    from stateroom.worker.meters import charged

    host = type("Host", (), {})()
    host.counters = Counters()

    async def stepper() -> None:
        for _ in range(steps):
            await trio.lowlevel.checkpoint()

    out = {}
    for name, fn in (("plain", stepper), ("charged", charged(host, stepper))):
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            await fn()
            best = min(best, time.process_time() - t)
        out[name] = best / steps * 1e6
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
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()

    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        for meters in order:
            results[meters].append(await one_round(meters, args))

    def med(meters: bool, key: str) -> float:
        return median([x[key] for x in results[meters]])

    rows = []
    for key, label in [
        ("many_rps", "(a) 32 clients, 100 objects req/s"),
        ("worker_us", "(a) worker CPU µs per request"),
        ("all_us", "(a) all processes' CPU µs per request"),
        ("seq_rps", "(b) sequential req/s"),
        ("seq_p50", "(b) sequential p50 ms"),
        ("seq_p99", "(b) sequential p99 ms"),
    ]:
        on, off = med(True, key), med(False, key)
        change = (on - off) / off * 100 if off else 0.0
        rows.append(
            {
                "figure": label,
                "meters on": on,
                "meters off": off,
                "change %": change,
                "target": "<= 5 % cost" if key.endswith("rps") or key.endswith("_us") else "",
            }
        )
    print_table(
        f"bench/meters.py — workers={args.workers}, {args.rounds} alternating rounds of "
        f"{args.seconds:g} s each (medians); billed requests per 'on' round: "
        f"{[int(x['billed']) for x in results[True]]}",
        rows,
    )
    wrap = await wrapper_cost()
    take_ms = await trio.to_thread.run_sync(take_cost)
    print_table(
        "(d) in-process costs of metering (process CPU, best of 3)",
        [
            {"figure": "task step, plain", "µs": wrap["plain"]},
            {"figure": "task step, charged (CPU meter)", "µs": wrap["charged"]},
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
