"""WebSocket server cores compared: trio-websocket versus the supervisor's wsproto adapter.

Why `supervisor/websocket.py` exists (issue 4 asks to measure both and say why):
the same echo server is written twice, once on trio-websocket (`serve_websocket`)
and once on the thin adapter the supervisor uses (h11 for the upgrade, wsproto for
frames, `ServerWebSocket` for I/O), and driven by the same fast client (the
`websockets` library on asyncio, in its own process):

  echo RTT      one connection, one message at a time: p50 / p99
  pipelined     10 connections each sending 5,000 messages without waiting: msg/s
  handshakes    2,000 connections opened 100 at a time: handshakes/s
  idle memory   5,000 idle connections: server RSS per connection

A bare asyncio `websockets` echo server is the baseline for the client's own limits.

Usage: python bench/ws_adapter.py [--idle 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import pct, print_table  # noqa: E402

# ====================================================================== servers


async def serve_trio_websocket(port: int) -> None:
    import trio
    from trio_websocket import ConnectionClosed, serve_websocket

    async def handler(request) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
        print("ready", flush=True)


async def serve_adapter(port: int) -> None:
    import h11
    import trio

    from stateroom._protocol import HttpRequest
    from stateroom.supervisor.websocket import (
        Closed,
        ServerWebSocket,
        accept_headers,
        data_frame,
        handshake_error,
    )

    async with trio.open_nursery() as nursery:

        async def handle(stream: trio.SocketStream) -> None:
            conn = h11.Connection(h11.SERVER)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                break
            while conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
                pass
            request = HttpRequest(
                event.method.decode(),
                event.target.decode(),
                [(k.decode(), v.decode()) for k, v in event.headers],
                b"",
            )
            if handshake_error(request) is not None:
                return
            await stream.send_all(
                conn.send(
                    h11.InformationalResponse(status_code=101, headers=accept_headers(request, []))
                )
            )
            ws = ServerWebSocket(
                stream,
                nursery,
                trailing=bytes(conn.trailing_data[0]),
                max_message_bytes=1 << 25,
                max_buffered_bytes=1 << 26,
            )
            while True:
                msg = await ws.receive()
                if isinstance(msg, Closed):
                    break
                ws.send_frame(data_frame(msg.data, msg.text))
            await ws.wait_flushed(1.0)
            await ws.aclose()

        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        print("ready", flush=True)


async def serve_websockets(port: int) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None
    ):
        print("ready", flush=True)
        await asyncio.Future()


# ====================================================================== client


async def client(url: str, idle: int) -> dict:
    from websockets.asyncio.client import connect

    async def open_one():
        return await connect(
            url, compression=None, ping_interval=None, max_size=None, open_timeout=60
        )

    ws = await open_one()
    for _ in range(200):
        await ws.send("warm")
        await ws.recv()
    lat = []
    for i in range(5000):
        t = time.perf_counter()
        await ws.send(f"m{i}")
        await ws.recv()
        lat.append(time.perf_counter() - t)
    await ws.close()

    conns = [await open_one() for _ in range(10)]

    async def pump(c) -> None:
        async def reader() -> None:
            for _ in range(5000):
                await c.recv()

        r = asyncio.create_task(reader())
        for i in range(5000):
            await c.send(f"p{i}")
        await r

    t = time.perf_counter()
    await asyncio.gather(*(pump(c) for c in conns))
    pipelined = 50_000 / (time.perf_counter() - t)
    for c in conns:
        await c.close()

    sem = asyncio.Semaphore(100)

    async def limited():
        async with sem:
            return await open_one()

    t = time.perf_counter()
    shaken = await asyncio.gather(*(limited() for _ in range(2000)))
    handshakes = 2000 / (time.perf_counter() - t)
    print(json.dumps({"stage": "handshakes"}), flush=True)
    idle_conns = shaken + list(
        await asyncio.gather(*(limited() for _ in range(max(0, idle - 2000))))
    )
    print(json.dumps({"stage": "idle", "open": len(idle_conns)}), flush=True)
    sys.stdin.readline()
    for c in idle_conns:
        await c.close()
    return {
        "rtt_p50_us": pct(lat, 50) * 1e6,
        "rtt_p99_us": pct(lat, 99) * 1e6,
        "pipelined_msg_s": pipelined,
        "handshakes_s": handshakes,
    }


# ====================================================================== orchestration


def measure(kind: str, idle: int) -> dict:
    import socket

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        proc = psutil.Process(server.pid)
        rss0 = proc.memory_info().rss
        cl = subprocess.Popen(
            [sys.executable, __file__, "--client", f"ws://127.0.0.1:{port}/", "--idle", str(idle)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert cl.stdout is not None and cl.stdin is not None
        cl.stdout.readline()  # handshakes done
        rss_before_idle = proc.memory_info().rss
        opened = json.loads(cl.stdout.readline())["open"]
        time.sleep(1.0)
        rss_idle = proc.memory_info().rss
        cl.stdin.write("\n")
        cl.stdin.flush()
        result = json.loads(cl.stdout.readline())
        cl.wait(60)
    finally:
        server.kill()
        server.wait()
    result["rss_per_conn_kb"] = (rss_idle - rss0) / opened / 1e3
    result["rss_start_mb"] = rss0 / 1e6
    del rss_before_idle
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve == "trio-websocket":
        import trio

        trio.run(serve_trio_websocket, args.port)
    elif args.serve == "adapter":
        import trio

        trio.run(serve_adapter, args.port)
    elif args.serve == "websockets":
        asyncio.run(serve_websockets(args.port))
    elif args.client:
        print(json.dumps(asyncio.run(client(args.client, args.idle))), flush=True)
    else:
        rows = []
        for kind, label in (
            ("adapter", "wsproto adapter (supervisor/websocket.py)"),
            ("trio-websocket", "trio-websocket"),
            ("websockets", "baseline: asyncio websockets server"),
        ):
            print(f"measuring {label} ...", flush=True)
            r = measure(kind, args.idle)
            rows.append(
                {
                    "server": label,
                    "echo p50 us": r["rtt_p50_us"],
                    "echo p99 us": r["rtt_p99_us"],
                    "pipelined msg/s": r["pipelined_msg_s"],
                    "handshakes/s": r["handshakes_s"],
                    f"RSS per idle conn ({args.idle})": f"{r['rss_per_conn_kb']:.1f} KB",
                }
            )
        print_table("WebSocket server cores, same asyncio `websockets` client", rows)


if __name__ == "__main__":
    main()
