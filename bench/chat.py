"""Chat rooms over hibernating WebSockets (issue 4 targets), with baselines from the same run.

(a) paced: 100 clients in one room, each sends 1 msg/s; deliveries/s, p50/p99
    broadcast latency (send -> arrival at each receiver)        target p99 <= 10 ms
(b) burst: the same 100 clients each send 10 messages at once;
    deliveries/s                                                 target >= 20,000/s
(c) parked idle sockets (as many as RLIMIT_NOFILE allows, up to 20,000) over 1,000
    rooms: supervisor RSS per parked socket; worker RSS before sockets, with 1,000
    active rooms, and after they hibernated       target <= 25 KB/socket, worker back
                                                  within 10 % of its baseline
(d) wake latency: a message to a hibernated room -> its first broadcast back to the
    sender, p50/p99, beside the same for an awake room           target p50 <= 3 ms

Baselines: (a)/(b) the same clients against a bare single-process asyncio
`websockets` broadcast server (no runtime, no durability, no process hop);
(c) the supervisor's RSS before any socket; (d) the awake room. For scale, Cloudflare's
workerd on this machine: 9,990 paced deliveries/s at p99 12-24 ms, 30-42 k burst
deliveries/s.

Load comes from separate client processes: for (a)/(b) Node's WebSocket client
(`bench/chat_client.mjs`, when `node` is installed; set CHAT_BENCH_PYTHON_CLIENT=1 to
use Python instead), for (c)/(d) and as the fallback the `websockets` library on
asyncio (`python bench/chat.py --client ...`); never trio-websocket, which would be
the bottleneck. The room (bench/apps/chat) broadcasts without
storage, so the figures measure the socket path. Everything shares 2 cores.

Usage: python bench/chat.py [--seconds 10] [--idle 20000] [--rooms 1000] [--skip-idle]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pct, print_table  # noqa: E402

HERE = Path(__file__).resolve().parent
APP = HERE / "apps" / "chat" / "stateroom.toml"
IDLE_PROCESSES = 2


# ====================================================================== client side (asyncio)


async def _connect(url: str):
    from websockets.asyncio.client import connect

    return await connect(url, compression=None, ping_interval=None, max_size=None, open_timeout=120)


async def _connect_all(urls: list[str], concurrency: int = 100) -> list:
    sem = asyncio.Semaphore(concurrency)

    async def one(url: str):
        async with sem:
            for attempt in range(5):
                try:
                    return await _connect(url)
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            return await _connect(url)

    return list(await asyncio.gather(*(one(u) for u in urls)))


async def client_paced(url: str, n: int, seconds: float) -> dict:
    conns = await _connect_all([url] * n)
    lat: list[float] = []
    start = time.monotonic() + 1.0
    end = start + seconds

    async def sender(i: int, ws) -> int:
        phase, k = random.random(), 0
        while start + phase + k < end:
            await asyncio.sleep(max(0.0, start + phase + k - time.monotonic()))
            await ws.send(f"{i} {k} {time.monotonic():.9f}")
            k += 1
        return k

    async def receiver(ws) -> None:
        async for msg in ws:
            now = time.monotonic()
            sent = float(msg.rsplit(" ", 1)[1])
            if start <= sent < end:
                lat.append(now - sent)

    receivers = [asyncio.create_task(receiver(ws)) for ws in conns]
    sent = sum(await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(conns))))
    expected = sent * n
    deadline = time.monotonic() + 10
    while len(lat) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for t in receivers:
        t.cancel()
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return {
        "sent": sent,
        "deliveries": len(lat),
        "expected": expected,
        "per_s": len(lat) / seconds,
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3 if lat else float("nan"),
    }


async def client_burst(url: str, n: int, per: int, rounds: int) -> dict:
    conns = await _connect_all([url] * n)
    results = []
    for r in range(rounds):
        expected = n * per
        got = [0] * n
        last = [0.0] * n
        lat: list[float] = []
        done = asyncio.Event()
        remaining = [n]
        receivers = [
            asyncio.create_task(_burst_receiver(i, ws, expected, got, last, lat, remaining, done))
            for i, ws in enumerate(conns)
        ]
        await asyncio.sleep(0.2)
        t0 = time.monotonic()

        async def sender(i: int, ws) -> None:
            for k in range(per):
                await ws.send(f"{i} {k} {time.monotonic():.9f}")

        await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(conns)))
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            pass
        for t in receivers:
            t.cancel()
        total = sum(got)
        seconds = max(last) - t0 if total else float("nan")
        results.append(
            {
                "round": r + 1,
                "deliveries": total,
                "expected": n * expected,
                "seconds": seconds,
                "per_s": total / seconds if total else 0.0,
                "p50_ms": pct(lat, 50) * 1e3,
                "p99_ms": pct(lat, 99) * 1e3,
            }
        )
        await asyncio.sleep(0.5)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return {"rounds": results}


async def _burst_receiver(i, ws, expected, got, last, lat, remaining, done) -> None:
    while got[i] < expected:
        msg = await ws.recv()
        now = time.monotonic()
        got[i] += 1
        last[i] = now
        lat.append(now - float(msg.rsplit(" ", 1)[1]))
    remaining[0] -= 1
    if not remaining[0]:
        done.set()


async def client_idle(base: str, rooms: list[tuple[str, int]]) -> None:
    """Hold sockets for `rooms` [(name, sockets)] and obey commands on stdin."""
    urls = [f"{base}/{name}" for name, count in rooms for _ in range(count)]
    conns = await _connect_all(urls)
    firsts = []
    i = 0
    for _name, count in rooms:
        firsts.append(conns[i])
        i += count
    # Drain what other sockets receive (broadcasts) so no buffer fills.
    others = set(id(ws) for ws in conns) - set(id(ws) for ws in firsts)

    async def drain(ws) -> None:
        try:
            async for _ in ws:
                pass
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    drains = [asyncio.create_task(drain(ws)) for ws in conns if id(ws) in others]
    print(json.dumps({"ready": len(conns)}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        cmd, _, arg = line.partition(" ")
        if cmd == "activate":

            async def poke(ws) -> None:
                await ws.send("activate 0 0")
                await ws.recv()

            await asyncio.gather(*(poke(ws) for ws in firsts))
            print(json.dumps({"activated": len(firsts)}), flush=True)
        elif cmd == "wake":
            asleep, awake = [], []
            for ws in firsts[: int(arg)]:
                t = time.monotonic()
                await ws.send(f"wake 0 {t:.9f}")
                await ws.recv()
                asleep.append(time.monotonic() - t)
                t = time.monotonic()
                await ws.send(f"awake 0 {t:.9f}")
                await ws.recv()
                awake.append(time.monotonic() - t)
            print(json.dumps({"asleep": asleep, "awake": awake}), flush=True)
    for t in drains:
        t.cancel()
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


async def baseline_server(port: int) -> None:
    """A bare asyncio `websockets` broadcast server: one room, no runtime."""
    import websockets
    from websockets.asyncio.server import serve

    room: set = set()

    async def handler(ws) -> None:
        room.add(ws)
        try:
            async for msg in ws:
                websockets.broadcast(room, msg)
        except websockets.ConnectionClosed:
            pass  # a client that exits without a close frame
        finally:
            room.discard(ws)

    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None
    ):
        print("ready", flush=True)
        await asyncio.Future()


def client_main(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec)
    if args.client == "paced":
        result = asyncio.run(client_paced(spec["url"], spec["n"], spec["seconds"]))
    elif args.client == "burst":
        result = asyncio.run(client_burst(spec["url"], spec["n"], spec["per"], spec["rounds"]))
    elif args.client == "idle":
        asyncio.run(client_idle(spec["base"], [tuple(r) for r in spec["rooms"]]))
        return
    elif args.client == "baseline-server":
        asyncio.run(baseline_server(spec["port"]))
        return
    else:
        raise SystemExit(f"unknown client mode {args.client}")
    print(json.dumps(result), flush=True)


# ====================================================================== orchestration (trio)


def node_client() -> list[str] | None:
    """The Node load generator's command prefix, if a Node with WebSocket is installed."""
    import shutil

    node = shutil.which("node")
    if node is None:
        return None
    cmd = [node, "--experimental-websocket", "--no-warnings"]
    probe = subprocess.run(
        cmd + ["-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    if probe.returncode != 0:
        cmd = [node, "--no-warnings"]
        if subprocess.run(
            cmd + ["-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
        ).returncode:
            return None
    return cmd + [str(HERE / "chat_client.mjs")]


NODE = None if os.environ.get("CHAT_BENCH_PYTHON_CLIENT") else node_client()
CLIENT_NAME = "node (undici WebSocket)" if NODE else "python websockets (asyncio)"


def run_client(mode: str, spec: dict) -> dict:
    if NODE and mode == "paced":
        cmd = NODE + ["paced", spec["url"], str(spec["n"]), str(spec["seconds"])]
    elif NODE and mode == "burst":
        cmd = NODE + ["burst", spec["url"], str(spec["n"]), str(spec["per"]), str(spec["rounds"])]
    else:
        cmd = [sys.executable, __file__, "--client", mode, "--spec", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"client {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spawn(mode: str, spec: dict, *, stdin: bool) -> subprocess.Popen:
    """A client (or baseline server) process talking JSON lines on stdout."""
    return subprocess.Popen(
        [sys.executable, __file__, "--client", mode, "--spec", json.dumps(spec)],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def rss(rt) -> dict[str, int]:
    procs = await rt.processes()
    out = {"supervisor": next(p["rss_bytes"] for p in procs if p["role"] == "supervisor")}
    out["workers"] = sum(p["rss_bytes"] for p in procs if p["role"] == "worker")
    out["objects_active"] = sum(p["objects_active"] for p in procs if p["role"] == "worker")
    out["sockets_parked"] = next(p["sockets_parked"] for p in procs if p["role"] == "supervisor")
    return out


async def wait_for(rt, predicate, timeout: float, what: str) -> dict[str, int]:
    import trio

    last: dict[str, int] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await rss(rt)
            if predicate(last):
                return last
            await trio.sleep(0.2)
    print(f"  (gave up waiting for {what}: {last})", flush=True)
    return last


PACED_ROUNDS = 3


def median_round(rounds: list[dict]) -> dict:
    """The round with the median p99 (the machine is shared: single rounds are noisy)."""
    ordered = sorted(rounds, key=lambda r: r["p99_ms"])
    return ordered[len(ordered) // 2]


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


async def bench_traffic(rt, seconds: float) -> None:
    import trio

    url = rt.url.replace("http://", "ws://") + "/paced"
    port = free_port()
    server = spawn("baseline-server", {"port": port}, stdin=False)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        base_url = f"ws://127.0.0.1:{port}/"
        print(
            f"(a) paced: 100 clients x 1 msg/s, {PACED_ROUNDS} rounds of {seconds:g} s each,"
            " alternating with the baseline ...",
            flush=True,
        )
        paced_rounds: list[dict] = []
        base_rounds: list[dict] = []
        for _ in range(PACED_ROUNDS):
            paced_rounds.append(
                await trio.to_thread.run_sync(
                    run_client, "paced", {"url": url, "n": 100, "seconds": seconds}
                )
            )
            base_rounds.append(
                await trio.to_thread.run_sync(
                    run_client, "paced", {"url": base_url, "n": 100, "seconds": seconds}
                )
            )
        paced = median_round(paced_rounds)
        paced_base = median_round(base_rounds)
        print("(b) burst: 100 clients x 10 messages at once, 5 rounds ...", flush=True)
        burst = await trio.to_thread.run_sync(
            run_client,
            "burst",
            {
                "url": rt.url.replace("http://", "ws://") + "/burst",
                "n": 100,
                "per": 10,
                "rounds": 5,
            },
        )
        burst_base = await trio.to_thread.run_sync(
            run_client, "burst", {"url": base_url, "n": 100, "per": 10, "rounds": 5}
        )
    finally:
        server.kill()
        server.wait()
    rows = []
    for name, r, each in (
        ("stateroom", paced, paced_rounds),
        ("bare websockets server", paced_base, base_rounds),
    ):
        rows.append(
            {
                "server": name,
                "deliveries/s": r["per_s"],
                "delivered": f"{r['deliveries']}/{r['expected']}",
                "p50 ms": r["p50_ms"],
                "p99 ms": r["p99_ms"],
                "p99 ms per round": " / ".join(f"{x['p99_ms']:.1f}" for x in each),
                "max ms": r["max_ms"],
            }
        )
    rows.append(
        {"server": "target / workerd", "deliveries/s": "~10,000 / 9,990", "p99 ms": "<= 10 / 12-24"}
    )
    print_table(
        f"(a) paced: 100 clients in one room, 1 msg/s each; median of {PACED_ROUNDS} rounds"
        f" (client: {CLIENT_NAME})",
        rows,
    )
    rows = []
    for name, r in (("stateroom", burst), ("bare websockets server", burst_base)):
        rates = sorted(x["per_s"] for x in r["rounds"])
        best = max(r["rounds"], key=lambda x: x["per_s"])
        rows.append(
            {
                "server": name,
                "median deliveries/s": rates[len(rates) // 2],
                "best deliveries/s": best["per_s"],
                "delivered (best round)": f"{best['deliveries']}/{best['expected']}",
                "p50 ms (best)": best["p50_ms"],
                "p99 ms (best)": best["p99_ms"],
            }
        )
    rows.append({"server": "target / workerd", "median deliveries/s": ">= 20,000 / 30-42 k"})
    print_table(
        f"(b) burst: 100 clients each send 10 at once, 100,000 deliveries a round (client: {CLIENT_NAME})",
        rows,
    )


async def bench_idle(rt, sockets: int, rooms: int, hibernate_after: float) -> None:
    import trio

    base = rt.url.replace("http://", "ws://")
    # Warm-up: one room, one socket, one message, so imports and caches are paid for.
    warm = await trio.to_thread.run_sync(
        run_client, "paced", {"url": base + "/warmup", "n": 2, "seconds": 1}
    )
    assert warm["deliveries"] > 0
    before = await wait_for(
        rt, lambda r: r["objects_active"] == 0, hibernate_after + 30, "warm-up room to hibernate"
    )
    per_room = [sockets // rooms + (1 if i < sockets % rooms else 0) for i in range(rooms)]
    specs = [[] for _ in range(IDLE_PROCESSES)]
    for i, count in enumerate(per_room):
        specs[i % IDLE_PROCESSES].append((f"room-{i}", count))
    print(
        f"(c) opening {sockets} sockets over {rooms} rooms ({IDLE_PROCESSES} client processes) ...",
        flush=True,
    )
    t0 = time.monotonic()
    procs = [spawn("idle", {"base": base, "rooms": spec}, stdin=True) for spec in specs]

    def ask(proc: subprocess.Popen, line: str | None) -> dict:
        assert proc.stdin is not None and proc.stdout is not None
        if line is not None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        out = proc.stdout.readline()
        if not out:
            raise RuntimeError("idle client exited")
        return json.loads(out)

    try:
        ready = [await trio.to_thread.run_sync(ask, p, None) for p in procs]
        opened = sum(r["ready"] for r in ready)
        connect_s = time.monotonic() - t0
        parked = await wait_for(
            rt,
            lambda r: r["sockets_parked"] >= opened and r["objects_active"] == 0,
            hibernate_after + 60,
            "all rooms to hibernate after connecting",
        )
        for p in procs:
            await trio.to_thread.run_sync(ask, p, "activate")
        active = await wait_for(
            rt, lambda r: r["objects_active"] >= rooms, 10, "rooms to be active"
        )
        asleep = await wait_for(
            rt, lambda r: r["objects_active"] == 0, hibernate_after + 60, "rooms to hibernate"
        )
        # The workers hand freed pages back after their eviction sweeps (at most every
        # 2 s, worker/memory.py): measure the steady state, once their RSS has not
        # fallen for 3 s (at most 20 s).
        steady = 0
        with trio.move_on_after(20):
            while steady < 3:
                await trio.sleep(1.0)
                now = await rss(rt)
                steady = steady + 1 if now["workers"] >= asleep["workers"] - 64 * 1024 else 0
                asleep = now if now["workers"] < asleep["workers"] else asleep
        asleep = await rss(rt)
        print("(d) wake latency: 200 hibernated rooms, one message each ...", flush=True)
        wakes = await trio.to_thread.run_sync(ask, procs[0], "wake 200")
    finally:
        for p in procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    per_socket = (parked["supervisor"] - before["supervisor"]) / max(1, parked["sockets_parked"])
    print_table(
        f"(c) {parked['sockets_parked']} parked idle sockets over {rooms} rooms (connected in {connect_s:.1f} s,"
        f" {opened / connect_s:,.0f} handshakes/s)",
        [
            {
                "figure": "supervisor RSS before sockets",
                "value": mb(before["supervisor"]),
                "target": "",
            },
            {
                "figure": "supervisor RSS with sockets parked",
                "value": mb(parked["supervisor"]),
                "target": "",
            },
            {
                "figure": "supervisor RSS per parked socket",
                "value": f"{per_socket / 1e3:.1f} KB",
                "target": "<= 25 KB (trio-websocket: ~19.5 KB/connection)",
            },
            {
                "figure": "workers RSS before sockets (baseline, 2 workers)",
                "value": mb(before["workers"]),
                "target": "",
            },
            {
                "figure": f"workers RSS with {active['objects_active']} active rooms",
                "value": mb(active["workers"]),
                "target": f"+{(active['workers'] / before['workers'] - 1) * 100:.0f} % over baseline",
            },
            {
                "figure": "workers RSS after the rooms hibernated",
                "value": mb(asleep["workers"]),
                "target": f"{(asleep['workers'] / before['workers'] - 1) * 100:+.1f} % vs baseline (target within 10 %)",
            },
            {
                "figure": "sockets still parked after hibernation",
                "value": str(asleep["sockets_parked"]),
            },
        ],
    )
    print_table(
        "(d) wake latency: message to a hibernated room -> first broadcast back",
        [
            {
                "room": "hibernated (constructor runs)",
                "p50 ms": pct(wakes["asleep"], 50) * 1e3,
                "p99 ms": pct(wakes["asleep"], 99) * 1e3,
                "n": len(wakes["asleep"]),
                "target": "p50 <= 3 ms",
            },
            {
                "room": "awake (baseline)",
                "p50 ms": pct(wakes["awake"], 50) * 1e3,
                "p99 ms": pct(wakes["awake"], 99) * 1e3,
                "n": len(wakes["awake"]),
            },
        ],
    )


async def main_async(args: argparse.Namespace) -> None:
    from stateroom.testing import open_runtime

    hard = raise_nofile()
    # The supervisor needs one descriptor per socket plus a few dozen of its own.
    sockets = min(args.idle, hard - 100)
    if sockets < args.idle:
        print(
            f"note: RLIMIT_NOFILE hard limit is {hard} here; parking {sockets} sockets instead of {args.idle}"
        )
    hibernate_after = 5.0
    async with open_runtime(workers=2, hibernate_after=hibernate_after, config=str(APP)) as rt:
        if not args.skip_traffic:
            await bench_traffic(rt, args.seconds)
    if not args.skip_idle:
        async with open_runtime(
            workers=2, hibernate_after=hibernate_after, evict_after=hibernate_after, config=str(APP)
        ) as rt:
            await bench_idle(rt, sockets, args.rooms, hibernate_after)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=20_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--skip-traffic", action="store_true")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    import trio

    print(f"bench/chat.py on {os.cpu_count()} cores, pid {os.getpid()}", flush=True)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
