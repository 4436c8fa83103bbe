"""The object bench/storage.py drives: durable puts, coalesced puts, SQL."""

import os
import tempfile
import time

from stateroom import DurableObject, _codec

PAYLOAD = "x" * 100


class Raw:
    """Raw APSW in the same worker process: the baseline, timed beside each figure."""

    def __init__(self, durability):
        import apsw  # imported here: the deployed classes travel by value (cloudpickle)

        self.dir = tempfile.mkdtemp(prefix="stateroom-raw-")
        conn = apsw.Connection(os.path.join(self.dir, "raw.sqlite"))
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "full" else "NORMAL"))
        conn.execute("CREATE TABLE kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT)")
        conn.execute("CREATE INDEX t_a ON t(a)")
        self.conn = conn
        self.rows = 0

    def puts(self, n):
        conn = self.conn
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for i in range(n):
            conn.execute(
                "INSERT OR REPLACE INTO kv VALUES(?, ?)", (f"k{i}".encode(), _codec.encode(PAYLOAD))
            )
        conn.execute("COMMIT")
        return time.perf_counter() - t0

    def inserts(self, n):
        conn = self.conn
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for i in range(self.rows, self.rows + n):
            conn.execute("INSERT INTO t(a, b) VALUES (?, ?)", (i, PAYLOAD))
        conn.execute("COMMIT")
        self.rows += n
        return time.perf_counter() - t0

    def selects(self, n):
        conn = self.conn
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("SELECT b FROM t WHERE a = ?", (i % self.rows,)).fetchall()
        return time.perf_counter() - t0


class Bench(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.raw = None

    async def compare(self, figure, n, repeats, durability):
        """Time `figure` through ctx.storage and with raw APSW, alternating; all times."""
        if self.raw is None:
            self.raw = Raw(durability)
        ours, raw = [], []
        for _ in range(repeats):
            ours.append(await getattr(self, "time_" + figure)(n))
            raw.append(getattr(self.raw, figure)(n))
        return {"ours": ours, "raw": raw}

    async def noop(self):
        return None

    async def bump(self):
        """One durable put per request (read-modify-write of a counter)."""
        n = (await self.ctx.storage.get("n") or 0) + 1
        await self.ctx.storage.put("n", n)
        return n

    async def count(self):
        return await self.ctx.storage.get("n")

    async def puts(self, n=100):
        """n puts in one event: coalesced into one commit (before the reply)."""
        for i in range(n):
            await self.ctx.storage.put(f"k{i}", PAYLOAD)
        return n

    async def time_puts(self, n=100):
        """Seconds for n puts plus their commit, measured inside the object."""
        t0 = time.perf_counter()
        for i in range(n):
            await self.ctx.storage.put(f"k{i}", PAYLOAD)
        await self.ctx.storage.sync()
        return time.perf_counter() - t0

    async def time_inserts(self, n=1000):
        sql = self.ctx.storage.sql
        sql.exec(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT);"
            "CREATE INDEX IF NOT EXISTS t_a ON t(a)"
        )
        await self.ctx.storage.sync()
        base = sql.exec("SELECT count(*) AS n FROM t").one()["n"]
        t0 = time.perf_counter()
        for i in range(base, base + n):
            sql.exec("INSERT INTO t(a, b) VALUES (?, ?)", i, PAYLOAD)
        await self.ctx.storage.sync()
        return time.perf_counter() - t0

    async def time_selects(self, n=1000):
        sql = self.ctx.storage.sql
        rows = sql.exec("SELECT count(*) AS n FROM t").one()["n"]
        t0 = time.perf_counter()
        for i in range(n):
            sql.exec("SELECT b FROM t WHERE a = ?", i % rows).one()
        return time.perf_counter() - t0
