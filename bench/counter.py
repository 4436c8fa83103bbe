"""HTTP counter through `Default` (issue 2 targets), with floors measured in the same run.

(a) sequential requests on one object: req/s, p50, p99   target >= 1,000 req/s, p99 <= 2 ms
(b) 32 keep-alive clients over 100 objects: req/s          target >= 2,000 req/s
(c) 32 keep-alive clients on one object: req/s             target >= 2,500 req/s
Floors: a raw APSW WAL commit loop (synchronous=FULL) and a raw trio Unix-socket
ping-pong. Load comes from wrk (Debian package) on the same 2-core machine.

Usage: python bench/counter.py [--seconds 10] [--workers N] [--durability full|process]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MANY_OBJECTS_WRK,
    apsw_commit_floor,
    print_table,
    sequential,
    trio_pingpong_floor,
    wrk,
)

from stateroom.testing import open_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()

    floor_apsw = await trio.to_thread.run_sync(apsw_commit_floor)
    floor_ipc = await trio.to_thread.run_sync(trio_pingpong_floor)
    rows = []
    async with open_runtime(
        workers=args.workers,
        durability=args.durability,
        config=str(ROOT / "examples" / "counter" / "stateroom.toml"),
    ) as rt:
        seq = await trio.to_thread.run_sync(sequential, rt.port, args.requests)
        many = await trio.to_thread.run_sync(
            lambda: wrk(rt.url + "/", connections=32, seconds=args.seconds, script=MANY_OBJECTS_WRK)
        )
        one = await trio.to_thread.run_sync(
            lambda: wrk(rt.url + "/hot", connections=32, seconds=args.seconds)
        )
    rows.append(
        {
            "case": "(a) sequential, one object",
            "req/s": seq["rps"],
            "p50 ms": seq["p50_ms"],
            "p99 ms": seq["p99_ms"],
            "target": ">=1,000 req/s, p99<=2 ms",
        }
    )
    rows.append(
        {
            "case": "(b) 32 clients, 100 objects",
            "req/s": many.get("rps"),
            "p50 ms": many.get("p50_ms"),
            "p99 ms": many.get("p99_ms"),
            "target": ">=2,000 req/s",
        }
    )
    rows.append(
        {
            "case": "(c) 32 clients, one object",
            "req/s": one.get("rps"),
            "p50 ms": one.get("p50_ms"),
            "p99 ms": one.get("p99_ms"),
            "target": ">=2,500 req/s",
        }
    )
    rows.append(
        {
            "case": "floor: raw APSW WAL commit (FULL)",
            "req/s": floor_apsw["rps"],
            "p50 ms": floor_apsw["p50_ms"],
            "p99 ms": floor_apsw["p99_ms"],
            "target": "",
        }
    )
    rows.append(
        {
            "case": "floor: trio Unix-socket ping-pong",
            "req/s": floor_ipc["rps"],
            "p50 ms": floor_ipc["p50_ms"],
            "p99 ms": floor_ipc["p99_ms"],
            "target": "",
        }
    )
    print_table(
        f"bench/counter.py — workers={args.workers} durability={args.durability} (workerd here: (a) p50 0.79 ms p99 2.0 ms; (b) 2,030; (c) 2,910 req/s)",
        rows,
    )
    if many.get("non2xx") or one.get("non2xx"):
        print(f"non-2xx responses: (b) {many.get('non2xx', 0)} (c) {one.get('non2xx', 0)}")


if __name__ == "__main__":
    trio.run(main)
