"""Redeploys under load: what a code update costs the requests flowing meanwhile.

(a) steady: 16 keep-alive clients over 32 objects through `Default`, no deploy
    (the baseline, measured in the same run);
(b) redeploying: the same load while the code is redeployed back to back
    (alternating two versions; every busy object drains and is re-created);
(c) deploy round trip on an idle runtime (client.deploy: import + pickle + validate
    in a worker + record + activate everywhere).
Printed per phase: requests/s, p50/p99/max latency, failed requests (must be 0),
deploys done and their p50 round trip.

Usage: python bench/redeploy.py [--seconds 6] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RawHttp, pct, print_table  # noqa: E402

from stateroom.testing import open_runtime  # noqa: E402

APP = """
from stateroom import DurableObject, Response, WorkerEntrypoint

VERSION = {version!r}


class Counter(DurableObject):
    async def fetch(self, request):
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response(f"{{VERSION}}:{{count}}")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.COUNTER.get_by_name(request.url_path.strip("/")).fetch(request)
"""

TOML = """name = "bench"
main = "app.py"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]
"""


def write(folder: Path, version: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP.format(version=version))
    (folder / "stateroom.toml").write_text(TOML)
    return str(folder / "stateroom.toml")


def load(port: int, seconds: float, clients: int, objects: int) -> dict[str, float]:
    """Blocking load from `clients` threads; returns req/s, latency percentiles, failures."""
    lat: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        http = RawHttp("127.0.0.1", port)
        mine, n = [], i
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, _ = http.get(f"/obj-{n % objects}")
            mine.append(time.perf_counter() - t)
            n += clients
            if status != 200:
                with lock:
                    failures[0] += 1
        http.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    return {
        "req/s": len(lat) / total,
        "p50 ms": pct(lat, 50) * 1e3,
        "p99 ms": pct(lat, 99) * 1e3,
        "max ms": max(lat) * 1e3 if lat else float("nan"),
        "failed": failures[0],
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stateroom-bench-") as tmp:
        configs = [write(Path(tmp) / v, v) for v in ("v1", "v2")]
        async with open_runtime(Path(tmp) / "data", workers=args.workers) as rt:
            await rt.deploy(configs[0])
            await trio.to_thread.run_sync(load, rt.port, 1.0, 16, 32)  # warm up
            rows = []
            steady = await trio.to_thread.run_sync(load, rt.port, args.seconds, 16, 32)
            rows.append(
                {"phase": "(a) steady, no deploy", **steady, "deploys": 0, "deploy p50 ms": None}
            )

            deploy_times: list[float] = []
            result: dict[str, float] = {}

            async def run_load() -> None:
                result.update(await trio.to_thread.run_sync(load, rt.port, args.seconds, 16, 32))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_load)
                deadline = trio.current_time() + args.seconds - 0.5
                i = 1
                while trio.current_time() < deadline:
                    t = time.perf_counter()
                    await rt.deploy(configs[i % 2])
                    deploy_times.append(time.perf_counter() - t)
                    i += 1
            rows.append(
                {
                    "phase": "(b) redeploying back to back",
                    **result,
                    "deploys": len(deploy_times),
                    "deploy p50 ms": pct(deploy_times, 50) * 1e3,
                }
            )

            idle: list[float] = []
            for i in range(10):
                t = time.perf_counter()
                await rt.deploy(configs[i % 2])
                idle.append(time.perf_counter() - t)
            rows.append(
                {
                    "phase": "(c) deploy on an idle runtime",
                    "req/s": None,
                    "p50 ms": None,
                    "p99 ms": None,
                    "max ms": None,
                    "failed": None,
                    "deploys": len(idle),
                    "deploy p50 ms": pct(idle, 50) * 1e3,
                }
            )
    print_table(f"redeploys under load ({args.workers} workers, 16 clients, 32 objects)", rows)


if __name__ == "__main__":
    trio.run(main)
