"""Test app for durable storage: every storage call reachable over RPC."""

import os

import trio

from stateroom import DurableObject, Response


class Store(DurableObject):
    # ------------------------------------------------------------ KV (async and sync)

    async def call(self, op, *args, **kwargs):
        """Run `await ctx.storage.<op>(*args, **kwargs)`."""
        return await getattr(self.ctx.storage, op)(*args, **kwargs)

    async def call_sync(self, op, *args, **kwargs):
        """Run `ctx.storage.kv.<op>(*args, **kwargs)`."""
        return getattr(self.ctx.storage.kv, op)(*args, **kwargs)

    async def sql(self, query, *bindings):
        cur = self.ctx.storage.sql.exec(query, *bindings)
        return {
            "columns": list(cur.column_names),
            "rows": cur.to_array(),
            "read": cur.rows_read,
            "written": cur.rows_written,
        }

    async def sql_raw(self, query, *bindings):
        return list(self.ctx.storage.sql.exec(query, *bindings).raw())

    async def sql_one(self, query, *bindings):
        return self.ctx.storage.sql.exec(query, *bindings).one()

    async def database_size(self):
        return self.ctx.storage.sql.database_size

    # ------------------------------------------------------------ gates

    async def incr(self, key="n"):
        """Read-modify-write with storage awaits only: the input gate makes it atomic."""
        n = (await self.ctx.storage.get(key) or 0) + 1
        await self.ctx.storage.put(key, n)
        return n

    async def incr_in_transaction(self, key="n"):
        """Read-modify-write across a non-storage await, inside a transaction."""

        async def body(txn):
            n = (await txn.get(key) or 0) + 1
            await trio.sleep(0.001)
            await txn.put(key, n)
            return n

        return await self.ctx.storage.transaction(body)

    async def incr_blocking(self, key="n"):
        """Read-modify-write across a non-storage await, inside block_concurrency_while."""

        async def body():
            n = (await self.ctx.storage.get(key) or 0) + 1
            await trio.sleep(0.001)
            await self.ctx.storage.put(key, n)
            return n

        return await self.ctx.block_concurrency_while(body)

    async def put_two(self, a, b):
        """Two writes in one turn: they commit together."""
        await self.ctx.storage.put("a", a)
        await self.ctx.storage.put("b", b)
        return True

    async def put_then_crash(self):
        """A crash between two writes of one turn."""
        await self.ctx.storage.put("a", "first")
        os._exit(70)
        await self.ctx.storage.put("b", "second")

    async def put_then_fail(self, value):
        """A user error after a write: the write stays (SPEC §5)."""
        await self.ctx.storage.put("kept", value)
        raise RuntimeError("boom after a write")

    async def transaction_then_fail(self, value):
        async def body(txn):
            await txn.put("txn", value)
            raise RuntimeError("boom inside a transaction")

        return await self.ctx.storage.transaction(body)

    async def transaction_rollback(self, value):
        async def body(txn):
            await txn.put("txn", value)
            txn.rollback()
            try:
                await txn.get("txn")
            except RuntimeError:
                return "rolled back"

        return await self.ctx.storage.transaction(body)

    async def transaction_ok(self, value):
        async def body(txn):
            await txn.put("txn", value)
            return await txn.get("txn")

        return await self.ctx.storage.transaction(body)

    async def transaction_sync_fail(self, value):
        def body():
            self.ctx.storage.kv.put("tsync", value)
            self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS ts(x)")
            self.ctx.storage.sql.exec("INSERT INTO ts VALUES (?)", value)
            raise RuntimeError("boom inside transaction_sync")

        return self.ctx.storage.transaction_sync(body)

    async def transaction_sync_ok(self, value):
        def body():
            self.ctx.storage.kv.put("tsync", value)
            return self.ctx.storage.kv.get("tsync")

        return self.ctx.storage.transaction_sync(body)

    async def nested_transactions(self):
        async def inner(txn):
            await txn.put("inner", 1)
            txn.rollback()

        async def outer(txn):
            await txn.put("outer", 1)
            await self.ctx.storage.transaction(inner)
            return await self.ctx.storage.list()

        return await self.ctx.storage.transaction(outer)

    async def write_and_sync(self, value):
        await self.ctx.storage.put("synced", value)
        await self.ctx.storage.sync()
        return True

    async def delete_all_with_alarm(self):
        await self.ctx.storage.put("k", 1)
        self.ctx.storage.sql.exec("CREATE TABLE t(a)")
        await self.ctx.storage.set_alarm(10**13)
        await self.ctx.storage.delete_all()
        return {
            "kv": await self.ctx.storage.list(),
            "alarm": await self.ctx.storage.get_alarm(),
            "tables": self.ctx.storage.sql.exec(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE '\\_stateroom%' ESCAPE '\\'"
            ).to_array(),
        }

    # ------------------------------------------------------------ PITR

    async def bookmark(self):
        return await self.ctx.storage.get_current_bookmark()

    async def bookmark_for_time(self, when):
        return await self.ctx.storage.get_bookmark_for_time(when)

    async def restore(self, bookmark):
        """Arrange a restore at the next start; returns the undo bookmark."""
        return await self.ctx.storage.on_next_session_restore_bookmark(bookmark)

    async def abort(self):
        self.ctx.abort("asked to")

    async def restore_and_abort(self, bookmark):
        await self.ctx.storage.on_next_session_restore_bookmark(bookmark)
        self.ctx.abort("restoring a bookmark")

    async def pid(self):
        return os.getpid()

    async def fetch(self, request):
        value = await self.ctx.storage.get("a")
        return Response(str(value))
