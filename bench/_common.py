"""Shared helpers for benchmarks: a table printer, percentiles, floors, a raw HTTP client.

Benchmarks print figures; they never assert. Every figure is printed beside a
baseline measured in the same run, because this machine is noisy.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        cols = list(rows[0]) if rows else []
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[_fmt(r.get(c)) for c in cols])
        Console(width=160).print(table)
    except ImportError:  # pragma: no cover
        print(title)
        for r in rows:
            print("  ", r)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client on a blocking socket (low client overhead)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return status, rest[:length]

    def close(self) -> None:
        self.sock.close()


def wrk(
    url: str, *, connections: int, seconds: float, threads: int = 2, script: str | None = None
) -> dict[str, float]:
    """Run wrk (Debian package) and parse requests/s, requests done and latency percentiles."""
    exe = shutil.which("wrk")
    if exe is None:
        return {"rps": float("nan")}
    cmd = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency"]
    tmp = None
    if script:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        tmp.write(script)
        tmp.close()
        cmd += ["-s", tmp.name]
    proc = subprocess.run(cmd + [url], capture_output=True, text=True, check=False)
    out = proc.stdout
    if "Requests/sec" not in out:
        print(f"wrk failed: {proc.stderr.strip() or out.strip()}")
    if tmp:
        os.unlink(tmp.name)
    result: dict[str, float] = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        if " requests in " in line:
            result["requests"] = float(line.split()[0])
        for p in ("50%", "99%"):
            if line.startswith(p):
                result["p" + p[:-1] + "_ms"] = _ms(line.split()[1])
        if line.startswith("Non-2xx"):
            result["non2xx"] = float(line.split()[-1])
    return result


def _ms(text: str) -> float:
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)


def apsw_commit_floor(n: int = 3000, synchronous: str = "FULL") -> dict[str, float]:
    """Raw APSW: one `INSERT OR REPLACE` + COMMIT per iteration in WAL mode."""
    import apsw

    with tempfile.TemporaryDirectory() as d:
        conn = apsw.Connection(os.path.join(d, "floor.sqlite"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID")
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO kv VALUES(?, ?)", (b"count", i.to_bytes(8, "big")))
            conn.execute("COMMIT")
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        conn.close()
    return {"rps": n / total, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


def trio_pingpong_floor(n: int = 5000) -> dict[str, float]:
    """Raw trio Unix-socket ping-pong between two processes (round trip per message)."""
    code = r"""
import socket, sys, trio
async def main():
    s = trio.socket.from_stdlib_socket(socket.socket(fileno=int(sys.argv[1])))
    stream = trio.SocketStream(s)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        await stream.send_all(data)
trio.run(main)
"""
    import sys

    import trio

    a, b = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", code, str(b.fileno())], pass_fds=(b.fileno(),))
    b.close()
    lat: list[float] = []

    async def run() -> float:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        msg = b"x" * 64
        await stream.send_all(msg)
        await stream.receive_some(65536)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await stream.send_all(msg)
            got = 0
            while got < len(msg):
                got += len(await stream.receive_some(65536))
            lat.append(time.perf_counter() - t)
        return time.perf_counter() - t0

    total = trio.run(run)
    a.close()
    proc.wait(5)
    return {"rps": n / total, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# wrk script: GET /obj-0 ... /obj-99 in turn (100 objects through Default).
MANY_OBJECTS_WRK = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/obj-" .. (counter % 100))
end
"""


def sequential(port: int, n: int) -> dict[str, float]:
    """n sequential keep-alive GETs on one object (after 200 warm-up requests)."""
    client = RawHttp("127.0.0.1", port)
    for _ in range(200):
        client.get("/seq")
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        status, _ = client.get("/seq")
        lat.append(time.perf_counter() - t)
        assert status == 200
    total = time.perf_counter() - t0
    client.close()
    return {"rps": n / total, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}
