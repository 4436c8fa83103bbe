"""Test app for tests/faults: objects that crash, spin, hog memory, and keep a ledger.

`Ledger` makes lost and doubled writes visible: every increment carries an op id
that is appended (never deduplicated) to its `ops` table in the same transaction
as the count, and every instance records its life (`lives`: instance, pid, first
and last write) and checks on each write that it is still the live one.
"""

import os
import time
import uuid

import trio
import trio.lowlevel

from stateroom import DurableObject, Response, WorkerEntrypoint


class Box(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        # New at every construction: a changed boot id means the object was reset.
        self.boot = uuid.uuid4().hex
        # Calls to `sleep` in flight right now (tests poll it instead of guessing).
        self.sleeping = 0

    async def boot_id(self):
        return self.boot

    async def pid(self):
        return os.getpid()

    async def put(self, key, value):
        await self.ctx.storage.put(key, value)
        return value

    async def get(self, key):
        return await self.ctx.storage.get(key)

    async def put_then_die(self, key, value):
        # The write commits in `sync()`; the process then dies before any other
        # code runs, so nothing queued after the COMMIT leaves it.
        await self.ctx.storage.put(key, value)
        await self.ctx.storage.sync()
        os._exit(9)

    async def put_then_sleep(self, key, value, seconds):
        await self.ctx.storage.put(key, value)
        await trio.sleep(seconds)  # the write commits here, before the reply
        return value

    async def sleep(self, seconds):
        self.sleeping += 1
        try:
            await trio.sleep(seconds)
        finally:
            self.sleeping -= 1
        return "slept"

    async def sleepers(self):
        return self.sleeping

    async def spin(self):
        while True:
            pass

    async def spin_awaiting(self):
        while True:
            await trio.lowlevel.checkpoint()

    async def spin_stubbornly(self):
        while True:
            try:
                while True:
                    pass
            except BaseException:  # noqa: BLE001 - swallows even the CPU-limit interrupt
                pass

    async def hold_gil(self):
        # One C call that holds the GIL for hours: no signal handler can run.
        return sum(range(10**13))

    async def sleep_holding_the_gil(self, seconds):
        # libc sleep through PyDLL keeps the GIL: the worker's loop, its watchdog
        # thread and its signal handlers all stand still, and no CPU is burnt.
        import ctypes

        ctypes.PyDLL(None).sleep(seconds)
        return "woke"

    async def sleep_blocking(self, seconds):
        time.sleep(seconds)  # noqa: ASYNC251 - blocks the worker's loop on purpose
        return "woke"

    async def hog(self, nbytes):
        self.blob = b"x" * nbytes
        return len(self.blob)

    async def hold(self, seconds):
        async def wait():
            await trio.sleep(seconds)
            return "held"

        return await self.ctx.block_concurrency_while(wait)

    async def abort(self):
        self.ctx.abort("asked to")

    async def fail_blocking(self):
        async def fail():
            raise ValueError("boom inside block_concurrency_while")

        await self.ctx.block_concurrency_while(fail)

    async def arm_alarm(self, ms_from_now):
        await self.ctx.storage.set_alarm(int(time.time() * 1000) + ms_from_now)
        return True

    async def alarm(self, info):
        count = (await self.ctx.storage.get("alarms") or 0) + 1
        await self.ctx.storage.put("alarms", count)

    async def fetch(self, request):
        parts = request.url_path.strip("/").split("/")
        if parts[0] == "put":
            await self.ctx.storage.put(parts[1], parts[2])
            return Response(parts[2])
        if parts[0] == "get":
            return Response(str(await self.ctx.storage.get(parts[1])))
        if parts[0] == "sleep":
            await trio.sleep(float(parts[1]))
            return Response("slept")
        return Response("unknown", status=404)


class Ledger(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.instance = uuid.uuid4().hex
        self.registered = False

    def _register(self):
        """First write of this instance: record its life (same transaction as the op)."""
        sql = self.ctx.storage.sql
        if not self.registered:
            sql.exec(
                "CREATE TABLE IF NOT EXISTS ops(op TEXT NOT NULL, amount INTEGER NOT NULL,"
                " instance TEXT NOT NULL)"
            )
            sql.exec(
                "CREATE TABLE IF NOT EXISTS lives(instance TEXT PRIMARY KEY, pid INTEGER,"
                " started REAL, last REAL)"
            )
            sql.exec("CREATE TABLE IF NOT EXISTS violations(what TEXT)")
            now = time.time()
            sql.exec("INSERT INTO lives VALUES (?, ?, ?, ?)", self.instance, os.getpid(), now, now)
            self.ctx.storage.kv.put("live", self.instance)
            self.registered = True
        live = self.ctx.storage.kv.get("live")
        if live != self.instance:
            sql.exec(
                "INSERT INTO violations VALUES (?)",
                f"instance {self.instance} (pid {os.getpid()}) wrote while {live} was live",
            )
        sql.exec("UPDATE lives SET last = ? WHERE instance = ?", time.time(), self.instance)

    async def apply(self, op, amount=1):
        self._register()
        self.ctx.storage.sql.exec("INSERT INTO ops VALUES (?, ?, ?)", op, amount, self.instance)
        count = (self.ctx.storage.kv.get("count") or 0) + amount
        self.ctx.storage.kv.put("count", count)
        return count

    async def report(self):
        sql = self.ctx.storage.sql
        tables = {r["name"] for r in sql.exec("SELECT name FROM sqlite_master WHERE type='table'")}
        if "ops" not in tables:
            return {"count": 0, "ops": [], "lives": [], "violations": []}
        return {
            "count": self.ctx.storage.kv.get("count") or 0,
            "ops": [r["op"] for r in sql.exec("SELECT op FROM ops")],
            "lives": [
                (r["instance"], r["pid"], r["started"], r["last"])
                for r in sql.exec("SELECT * FROM lives ORDER BY started")
            ],
            "violations": [r["what"] for r in sql.exec("SELECT what FROM violations")],
        }


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.url_path.strip("/").split("/")
        if parts[0] == "ledger" and len(parts) == 3:
            count = await self.env.LEDGER.get_by_name(parts[1]).apply(parts[2])
            return Response(str(count))
        if parts[0] == "box" and len(parts) >= 3:
            stub = self.env.BOX.get_by_name(parts[1])
            return await stub.fetch("/" + "/".join(parts[2:]))
        return Response("not found", status=404)
